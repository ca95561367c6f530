"""Neural base models (torch): feature map, layers, model zoo. Importing this needs torch."""
