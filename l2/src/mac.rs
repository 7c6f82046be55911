//! 48-bit IEEE MAC addresses.

use std::fmt;
use std::str::FromStr;

/// A 48-bit MAC address, any value: frames carry group and zero addresses too.
/// Where only a station's own address makes sense (a guest NIC, a static FDB
/// entry) use [`MacAddr::parse_station`] or [`MacAddr::is_station`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

/// Why a text is not the MAC address asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MacError {
    /// Not six two-digit hex bytes separated by `:` (the text as given).
    Malformed(String),
    /// A group (multicast or broadcast) address where a station's is needed.
    Multicast(MacAddr),
    /// `00:00:00:00:00:00` where a station's address is needed.
    Zero,
}

impl fmt::Display for MacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MacError::Malformed(s) => write!(
                f,
                "invalid MAC address {s:?} (expected six hex bytes like \"52:54:00:12:34:56\")"
            ),
            MacError::Multicast(mac) => write!(
                f,
                "MAC address {mac} is multicast; a NIC needs a unicast address"
            ),
            MacError::Zero => f.write_str("MAC address must not be all-zero"),
        }
    }
}

impl std::error::Error for MacError {}

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The I/G bit (least significant bit of the first octet) marks group
    /// addresses: multicast and broadcast.
    #[inline]
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    #[inline]
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// Whether this can be one station's address: unicast and not all-zero.
    /// A frame's source must be one; a switch never learns any other.
    #[inline]
    pub fn is_station(&self) -> bool {
        !self.is_multicast() && !self.is_zero()
    }

    /// Parses `"52:54:00:12:34:56"` (hex digits in either case) and requires a
    /// station's address ([`MacAddr::is_station`]): what a NIC or a static
    /// entry may be given.
    pub fn parse_station(s: &str) -> Result<MacAddr, MacError> {
        let mac: MacAddr = s.parse()?;
        if mac.is_multicast() {
            return Err(MacError::Multicast(mac));
        }
        if mac.is_zero() {
            return Err(MacError::Zero);
        }
        Ok(mac)
    }

    /// Packs the address into the low 48 bits of a u64 (table keys).
    #[inline]
    pub fn to_u64(self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// The address in the low 48 bits of `v` (the high 16 are ignored).
    #[inline]
    pub fn from_u64(v: u64) -> MacAddr {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

/// Six two-digit hex bytes separated by `:`, any address (see
/// [`MacAddr::parse_station`] for a station's).
impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<MacAddr, MacError> {
        let bad = || MacError::Malformed(s.to_owned());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            // from_str_radix alone would take "+a" or a single digit.
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(mac))
    }
}

/// Lower-case `52:54:00:12:34:56`, what [`FromStr`] reads back.
impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let mac: MacAddr = "52:54:00:ab:CD:ef".parse().unwrap();
        assert_eq!(mac, MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]));
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!(format!("{mac:?}"), "52:54:00:ab:cd:ef");
        assert_eq!(MacAddr::from_u64(mac.to_u64()), mac);
        assert_eq!(mac.to_u64(), 0x5254_00ab_cdef);
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5",
            "52:54:00:12:34:+5",
            "52-54-00-12-34-56",
            "52:54:00:12:34:5g",
            "52:54:00:12:34:56:",
        ] {
            assert_eq!(
                bad.parse::<MacAddr>(),
                Err(MacError::Malformed(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(
            MacError::Malformed("x".into()).to_string(),
            "invalid MAC address \"x\" (expected six hex bytes like \"52:54:00:12:34:56\")"
        );
    }

    #[test]
    fn station_rule() {
        assert_eq!(
            MacAddr::parse_station("02:00:00:00:00:01"),
            Ok(MacAddr([2, 0, 0, 0, 0, 1]))
        );
        let group = MacAddr([1, 0, 0x5e, 0, 0, 1]);
        assert_eq!(
            MacAddr::parse_station("01:00:5E:00:00:01"),
            Err(MacError::Multicast(group))
        );
        assert_eq!(
            MacError::Multicast(group).to_string(),
            "MAC address 01:00:5e:00:00:01 is multicast; a NIC needs a unicast address"
        );
        assert_eq!(
            MacAddr::parse_station("ff:ff:ff:ff:ff:ff"),
            Err(MacError::Multicast(MacAddr::BROADCAST))
        );
        assert_eq!(
            MacAddr::parse_station("00:00:00:00:00:00"),
            Err(MacError::Zero)
        );
        assert!(MacAddr([2, 0, 0, 0, 0, 1]).is_station());
        assert!(!MacAddr::ZERO.is_station() && !MacAddr::BROADCAST.is_station());
        assert!(!group.is_station() && group.is_multicast());
    }
}
