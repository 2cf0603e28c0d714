//! Transport: QUIC with mutual TLS, one connection per node pair carrying every group (issue 5).
