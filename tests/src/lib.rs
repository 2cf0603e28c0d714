//! Cluster tests for fleet: real `fleet-node` processes, broken on purpose, with histories checked by a
//! linearizability checker (per key, WGL search with memoization) and an append-list checker.
//!
//! Filled by the cluster-test issue; today it only compiles.
