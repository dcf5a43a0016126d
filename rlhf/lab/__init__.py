"""The built-in lab: a generated task world with an exact gold judge, simulated
annotators and a small base model pretrained on the spot (see world.py, gold.py).
"""
