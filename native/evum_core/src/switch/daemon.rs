//! The wire format of UML's "daemon" transport (the one uml_switch speaks):
//! the connect request a VM writes on the control stream and the reply that
//! names the switch's datagram socket. Pure functions, no I/O.
//!
//! Layouts (host byte order, see PROTOCOLS.md):
//! - v3: `u32 magic, u32 version = 3, u32 type = 0, sockaddr_un sock` at 12,
//!   then 2 bytes of padding.
//! - v1: `u32 magic, u32 type = 0, u8 mac[6], sockaddr_un sock` at 14; its
//!   type field sits where v3 has the version, so "version 0" means v1.
//!
//! Both are 124 bytes. Version 2 (a reply with a MAC) is not supported, as
//! in uml_switch.

/// `struct sockaddr_un` on Linux: 2-byte family and 108-byte path.
pub const SOCKADDR_UN_LEN: usize = 110;
/// The size of `struct request_v3` (and of `struct request_v1`).
pub const REQUEST_LEN: usize = 124;
pub const SWITCH_MAGIC: u32 = 0xfeed_face;
const REQ_NEW_CONTROL: u32 = 0;
const V3_ADDR_OFFSET: usize = 12;
const V1_ADDR_OFFSET: usize = 14;

/// An AF_UNIX address as the peer gave it: always the full 110 bytes.
pub type RawUnixAddr = [u8; SOCKADDR_UN_LEN];

/// Why a control request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the request is {0} bytes, shorter than a request_v3")]
    Short(usize),
    #[error("the request is {0} bytes, longer than a request_v3")]
    Oversized(usize),
    #[error("bad magic {0:#x}")]
    BadMagic(u32),
    #[error("unsupported protocol version {0}")]
    BadVersion(u32),
    #[error("unsupported request type {0}")]
    BadType(u32),
    #[error("the datagram address is not an AF_UNIX address")]
    BadAddress,
}

/// A valid REQ_NEW_CONTROL request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// 1 or 3.
    pub version: u32,
    /// Where the VM receives its frames.
    pub addr: RawUnixAddr,
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_ne_bytes(word)
}

/// Decodes a whole request (exactly [`REQUEST_LEN`] bytes).
pub fn decode_request(bytes: &[u8]) -> Result<Request, RequestError> {
    if bytes.len() < REQUEST_LEN {
        return Err(RequestError::Short(bytes.len()));
    }
    if bytes.len() > REQUEST_LEN {
        return Err(RequestError::Oversized(bytes.len()));
    }
    let magic = u32_at(bytes, 0);
    if magic != SWITCH_MAGIC {
        return Err(RequestError::BadMagic(magic));
    }
    let (version, offset) = match u32_at(bytes, 4) {
        3 => {
            let kind = u32_at(bytes, 8);
            if kind != REQ_NEW_CONTROL {
                return Err(RequestError::BadType(kind));
            }
            (3, V3_ADDR_OFFSET)
        }
        // v1's type field: REQ_NEW_CONTROL.
        0 => (1, V1_ADDR_OFFSET),
        other => return Err(RequestError::BadVersion(other)),
    };
    let mut addr = [0; SOCKADDR_UN_LEN];
    addr.copy_from_slice(&bytes[offset..offset + SOCKADDR_UN_LEN]);
    if u16::from_ne_bytes([addr[0], addr[1]]) != libc::AF_UNIX as u16 {
        return Err(RequestError::BadAddress);
    }
    Ok(Request { version, addr })
}

/// Encodes a v3 request for `addr` (what UML writes; for tests and clients).
pub fn encode_request(addr: &RawUnixAddr) -> [u8; REQUEST_LEN] {
    let mut out = [0; REQUEST_LEN];
    out[0..4].copy_from_slice(&SWITCH_MAGIC.to_ne_bytes());
    out[4..8].copy_from_slice(&3u32.to_ne_bytes());
    out[8..12].copy_from_slice(&REQ_NEW_CONTROL.to_ne_bytes());
    out[V3_ADDR_OFFSET..V3_ADDR_OFFSET + SOCKADDR_UN_LEN].copy_from_slice(addr);
    out
}

/// The key that tells VMs' addresses apart (one port per address): the
/// address with everything after a filesystem path's terminating NUL zeroed
/// (the kernel ignores the garbage a client may leave behind it). Abstract
/// addresses (path starting with NUL) are compared whole.
pub fn address_key(addr: &RawUnixAddr) -> RawUnixAddr {
    let mut key = *addr;
    if key[2] != 0 {
        if let Some(end) = key[2..].iter().position(|&b| b == 0) {
            key[2 + end..].fill(0);
        }
    }
    key
}

/// The full 110-byte `sockaddr_un` of a filesystem path, zero-padded: the
/// reply to a request. `None` if the path does not fit (107 bytes and a NUL).
pub fn path_address(path: &[u8]) -> Option<RawUnixAddr> {
    if path.is_empty() || path.len() >= SOCKADDR_UN_LEN - 2 || path.contains(&0) {
        return None;
    }
    let mut addr = [0; SOCKADDR_UN_LEN];
    addr[0..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    addr[2..2 + path.len()].copy_from_slice(path);
    Some(addr)
}

/// The full 110-byte `sockaddr_un` of an abstract name (a NUL, then `name`,
/// zero-padded to the end): a daemon port's socket on the switch, bound with
/// the whole length as UML binds its own, so that UML's fixed-length
/// `sendto` finds it.
/// `None` if the name does not fit (107 bytes).
pub fn abstract_address(name: &[u8]) -> Option<RawUnixAddr> {
    if name.is_empty() || name.len() > SOCKADDR_UN_LEN - 3 {
        return None;
    }
    let mut addr = [0; SOCKADDR_UN_LEN];
    addr[0..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    addr[3..3 + name.len()].copy_from_slice(name);
    Some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abstract_addr(seed: u8) -> RawUnixAddr {
        let mut addr = [seed; SOCKADDR_UN_LEN];
        addr[0..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        addr[2] = 0;
        addr
    }

    #[test]
    fn a_v3_request_round_trips() {
        let addr = abstract_addr(7);
        let req = decode_request(&encode_request(&addr)).unwrap();
        assert_eq!(req, Request { version: 3, addr });
    }

    #[test]
    fn a_v1_request_has_its_address_at_14() {
        let addr = abstract_addr(9);
        let mut bytes = [0u8; REQUEST_LEN];
        bytes[0..4].copy_from_slice(&SWITCH_MAGIC.to_ne_bytes());
        bytes[8..14].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        bytes[14..].copy_from_slice(&addr);
        assert_eq!(decode_request(&bytes).unwrap(), Request { version: 1, addr });
    }

    #[test]
    fn bad_requests_say_why() {
        let good = encode_request(&abstract_addr(1));
        assert_eq!(decode_request(&good[..100]), Err(RequestError::Short(100)));
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(decode_request(&long), Err(RequestError::Oversized(125)));
        let mut bad = good;
        bad[0] = 0;
        assert!(matches!(decode_request(&bad), Err(RequestError::BadMagic(_))));
        let mut v2 = good;
        v2[4..8].copy_from_slice(&2u32.to_ne_bytes());
        assert_eq!(decode_request(&v2), Err(RequestError::BadVersion(2)));
        let mut dump = good;
        dump[8..12].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(decode_request(&dump), Err(RequestError::BadType(1)));
        let mut inet = good;
        inet[12..14].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        assert_eq!(decode_request(&inet), Err(RequestError::BadAddress));
    }

    #[test]
    fn abstract_addresses_start_with_nul_and_are_bounded() {
        let addr = abstract_address(b"/tmp/x/data").unwrap();
        assert_eq!(addr[2], 0);
        assert_eq!(&addr[3..14], b"/tmp/x/data");
        assert!(addr[14..].iter().all(|&b| b == 0));
        assert!(abstract_address(&[b'a'; 108]).is_none());
        assert!(abstract_address(&[b'a'; 107]).is_some());
        assert!(abstract_address(b"").is_none());
    }

    #[test]
    fn path_addresses_are_padded_and_bounded() {
        let addr = path_address(b"/tmp/x/data").unwrap();
        assert_eq!(&addr[2..13], b"/tmp/x/data");
        assert!(addr[13..].iter().all(|&b| b == 0));
        assert!(path_address(&[b'a'; 108]).is_none());
        assert!(path_address(&[b'a'; 107]).is_some());
    }

    #[test]
    fn keys_ignore_garbage_after_a_path_but_not_in_abstract_names() {
        let mut path = path_address(b"/p").unwrap();
        path[50] = 0xaa;
        assert_eq!(address_key(&path), path_address(b"/p").unwrap());
        let abs = abstract_addr(3);
        assert_eq!(address_key(&abs), abs);
    }
}

#[cfg(test)]
#[path = "daemon_props.rs"]
mod props;
