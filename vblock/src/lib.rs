//! vblock: thin-provisioned pool. Built in its own issue.
