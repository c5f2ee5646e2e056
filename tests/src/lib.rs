//! End-to-end suite helpers.
