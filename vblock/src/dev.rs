//! Block devices (being written).
