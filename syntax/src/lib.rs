//! The words users type, with one rule each wherever they are typed:
//! `fabric.toml`, `fabricctl`, the control socket, the `vblock` tool and the
//! benches. A leaf crate because `fabric-config` and `vblock` both need it and
//! must not depend on each other.

mod name;
mod size;

pub use name::{valid_name, NAME_MAX};
#[doc(hidden)]
pub use size::SIZE_TABLE;
pub use size::{parse_size, SizeError};
