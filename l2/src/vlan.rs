//! 802.1Q VLAN ids.

use std::fmt;
use std::str::FromStr;

/// A usable 802.1Q VLAN id: 1..=4094. The 12-bit VID field also holds 0
/// ("priority tag only", no VLAN) and 4095 (reserved); neither is ever a
/// `VlanId`, so a port, a set or a table holding one needs no range check.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VlanId(u16);

/// A number that is not a usable VLAN id (the number as given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanIdError(pub i64);

impl fmt::Display for VlanIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VLAN id {} is outside {}..={}",
            self.0,
            VlanId::MIN.0,
            VlanId::MAX.0
        )
    }
}

impl std::error::Error for VlanIdError {}

impl VlanId {
    pub const MIN: VlanId = VlanId(1);
    pub const MAX: VlanId = VlanId(4094);
    /// VLAN 1, the 802.1Q default: an access port's VLAN unless configured.
    pub const DEFAULT: VlanId = VlanId(1);

    /// `vid` if it is a usable VLAN id (1..=4094).
    #[inline]
    pub const fn new(vid: u16) -> Result<VlanId, VlanIdError> {
        if vid < VlanId::MIN.0 || vid > VlanId::MAX.0 {
            Err(VlanIdError(vid as i64))
        } else {
            Ok(VlanId(vid))
        }
    }

    #[inline]
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The id as an index into per-VID tables of 4096 entries.
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// Every usable id, ascending.
    pub fn all() -> impl DoubleEndedIterator<Item = VlanId> + Clone {
        (VlanId::MIN.0..=VlanId::MAX.0).map(VlanId)
    }
}

impl TryFrom<u16> for VlanId {
    type Error = VlanIdError;

    fn try_from(vid: u16) -> Result<VlanId, VlanIdError> {
        VlanId::new(vid)
    }
}

/// Any integer a file or a request may carry; the error keeps it as given.
impl TryFrom<i64> for VlanId {
    type Error = VlanIdError;

    fn try_from(vid: i64) -> Result<VlanId, VlanIdError> {
        u16::try_from(vid)
            .ok()
            .and_then(|v| VlanId::new(v).ok())
            .ok_or(VlanIdError(vid))
    }
}

impl From<VlanId> for u16 {
    fn from(vid: VlanId) -> u16 {
        vid.0
    }
}

/// Why a text is not a VLAN id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VlanIdParseError {
    /// Not a decimal number (the text as given).
    NotANumber(String),
    OutOfRange(VlanIdError),
}

impl fmt::Display for VlanIdParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VlanIdParseError::NotANumber(s) => write!(f, "{s:?} is not a VLAN id"),
            VlanIdParseError::OutOfRange(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for VlanIdParseError {}

/// A decimal id, e.g. `"10"`.
impl FromStr for VlanId {
    type Err = VlanIdParseError;

    fn from_str(s: &str) -> Result<VlanId, VlanIdParseError> {
        let v: i64 = s
            .parse()
            .map_err(|_| VlanIdParseError::NotANumber(s.to_owned()))?;
        VlanId::try_from(v).map_err(VlanIdParseError::OutOfRange)
    }
}

impl fmt::Display for VlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The bare number, as the id reads in any table or set.
impl fmt::Debug for VlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_is_1_to_4094() {
        assert_eq!(VlanId::new(0), Err(VlanIdError(0)));
        assert_eq!(VlanId::new(4095), Err(VlanIdError(4095)));
        assert_eq!(VlanId::new(1).map(VlanId::get), Ok(1));
        assert_eq!(VlanId::new(4094).map(u16::from), Ok(4094));
        assert_eq!(VlanId::try_from(70_000i64), Err(VlanIdError(70_000)));
        assert_eq!(VlanId::try_from(-1i64), Err(VlanIdError(-1)));
        assert_eq!(VlanId::try_from(10u16).map(VlanId::index), Ok(10));
        assert_eq!(VlanId::all().count(), 4094);
        assert_eq!(VlanId::all().next(), Some(VlanId::MIN));
        assert_eq!(VlanId::all().next_back(), Some(VlanId::MAX));
        assert_eq!(
            VlanIdError(4095).to_string(),
            "VLAN id 4095 is outside 1..=4094"
        );
    }

    #[test]
    fn parses_and_prints() {
        let v: VlanId = "10".parse().unwrap();
        assert_eq!(
            (v.to_string(), format!("{v:?}")),
            ("10".into(), "10".into())
        );
        assert_eq!(
            "4095".parse::<VlanId>(),
            Err(VlanIdParseError::OutOfRange(VlanIdError(4095)))
        );
        assert_eq!(
            "99999999999999999999".parse::<VlanId>(),
            Err(VlanIdParseError::NotANumber("99999999999999999999".into()))
        );
        assert_eq!(
            " 1".parse::<VlanId>(),
            Err(VlanIdParseError::NotANumber(" 1".into()))
        );
    }
}
