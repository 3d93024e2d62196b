"""Training: window datasets over the feature store, the LightningModule, the train stage."""
