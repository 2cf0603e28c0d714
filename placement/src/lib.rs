//! Pure, deterministic placement of consensus-group members (see DESIGN.md section 4).
//!
//! Filled by issue 3: zone-aware rendezvous hashing, desired leaders, move plans.
