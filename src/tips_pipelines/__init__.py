"""Jobs that make TIPS training and probe data (shards, synthetic captions, the embedded scenes dataset)."""
