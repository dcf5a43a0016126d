"""Training stages. `loop.py` is the one loop of the offline stages (SFT, reward
model, DPO family); each stage module builds its objects and calls it.

Nothing heavy is imported here: `import rlhf.trainers` stays cheap.
"""
