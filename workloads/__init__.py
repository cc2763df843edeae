"""pagesim workloads: synthetic generators and real trace loaders that produce sim.RequestSpec lists."""
