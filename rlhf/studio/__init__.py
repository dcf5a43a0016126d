"""`rlhf studio RUNS_DIR`: a local web page to watch, debug and compare runs.

runs.py reads the run folders (no Flask, no torch); app.py is the Flask app
and its JSON API; cli.py serves it with waitress; play.py is the playground's
model worker, a subprocess, so the web process never imports torch;
static/studio.js draws the page (curves as SVG, samples, heat maps) with no
library and no network.
"""
