"""Using a trained model: load a bundle and score audio (`Predictor`), the MLflow pyfunc, explain one file."""
