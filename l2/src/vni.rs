//! VXLAN Network Identifiers (RFC 7348 §5).

use std::fmt;

/// A VXLAN Network Identifier: a 24-bit segment id.
///
/// A configuration names 1..=16_777_215 ([`Vni::new`]). The wire allows VNI 0
/// as well (RFC 7348 does not reserve it): [`Vni::from_wire`] decodes any
/// 24-bit value, and since no configured segment is 0, a packet carrying it is
/// always for an unknown segment.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

/// A number that is not a configurable VNI (the number as given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VniError(pub i64);

impl fmt::Display for VniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VNI {} is outside 1..={}", self.0, Vni::MAX)
    }
}

impl std::error::Error for VniError {}

impl Vni {
    /// Largest VNI: 2^24 - 1.
    pub const MAX: u32 = 0x00ff_ffff;

    /// A configurable VNI: 1..=[`Vni::MAX`].
    #[inline]
    pub const fn new(vni: u32) -> Result<Vni, VniError> {
        if vni == 0 || vni > Vni::MAX {
            Err(VniError(vni as i64))
        } else {
            Ok(Vni(vni))
        }
    }

    /// The VNI field of a received header (three bytes, big-endian): any
    /// 24-bit value, 0 included.
    #[inline]
    pub const fn from_wire(b: [u8; 3]) -> Vni {
        Vni(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    /// The three bytes of the header's VNI field.
    #[inline]
    pub const fn to_wire(self) -> [u8; 3] {
        let b = self.0.to_be_bytes();
        [b[1], b[2], b[3]]
    }

    #[inline]
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Vni {
    type Error = VniError;

    fn try_from(vni: u32) -> Result<Vni, VniError> {
        Vni::new(vni)
    }
}

/// Any integer a file or a request may carry; the error keeps it as given.
impl TryFrom<i64> for Vni {
    type Error = VniError;

    fn try_from(vni: i64) -> Result<Vni, VniError> {
        u32::try_from(vni)
            .ok()
            .and_then(|v| Vni::new(v).ok())
            .ok_or(VniError(vni))
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vni({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurable_range_and_wire() {
        assert_eq!(Vni::new(0), Err(VniError(0)));
        assert_eq!(Vni::new(1).map(Vni::get), Ok(1));
        assert_eq!(Vni::new(0xff_ffff).map(Vni::get), Ok(16_777_215));
        assert_eq!(Vni::try_from(0x100_0000u32), Err(VniError(16_777_216)));
        assert_eq!(Vni::try_from(-5i64), Err(VniError(-5)));
        assert_eq!(Vni::try_from(5010i64).map(Vni::get), Ok(5010));
        assert_eq!(VniError(0).to_string(), "VNI 0 is outside 1..=16777215");
        let v = Vni::new(0x12_3456).unwrap();
        assert_eq!(v.to_wire(), [0x12, 0x34, 0x56]);
        assert_eq!(Vni::from_wire(v.to_wire()), v);
        assert_eq!(Vni::from_wire([0, 0, 0]).get(), 0, "the wire may carry 0");
        assert_eq!(format!("{v} {v:?}"), "1193046 Vni(1193046)");
    }
}
