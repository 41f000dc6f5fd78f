//! Conformance suite for the repository seam.
