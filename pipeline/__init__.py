"""Ray Data jobs over object storage: encode corpora to Parquet archives and decode them back."""
