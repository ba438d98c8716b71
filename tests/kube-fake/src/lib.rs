//! A Kubernetes API server stand-in for tests (being written).
