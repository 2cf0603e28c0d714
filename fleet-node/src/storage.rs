//! Durable storage: one redb database per node shared by every group (issue 4).
