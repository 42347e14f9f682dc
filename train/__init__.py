"""Training stage: AlexNet with the 2012 paper's recipe (see train/recipe.py)."""
