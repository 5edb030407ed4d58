"""Everything that imports torch: the zoo, training, compression, inference and the Celery tasks."""
