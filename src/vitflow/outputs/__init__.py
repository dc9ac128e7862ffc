"""What a run writes: one bundle of pictures and a manifest per image, and the maps in shards
that load back (``vitflow.outputs.maps.load_maps``)."""
