"""Several replicas behind a router on one SimPy clock (sim.cluster.cluster) and the routing
policies (sim.cluster.router): round-robin, least-outstanding, prefix-aware with a load bound."""

from sim.cluster.cluster import Cluster, ClusterResult, ClusterSpec, simulate_cluster, sum_memory
from sim.cluster.router import ROUTERS, ReplicaView, Router, make_router

__all__ = ["Cluster", "ClusterResult", "ClusterSpec", "ROUTERS", "ReplicaView", "Router", "make_router",
           "simulate_cluster", "sum_memory"]
