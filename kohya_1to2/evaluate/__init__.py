"""`evaluate` and `report`: fixed-seed generation per weights row, grids, metrics, the HTML run report."""
