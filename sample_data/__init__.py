"""Sample data for imagingflows: small generated samples and the scripts that make them."""
