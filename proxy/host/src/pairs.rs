//! The proxy-wasm serialisation of header maps: `u32 count`, `count x (u32 key_len, u32
//! value_len)`, then each key and value followed by a NUL (lengths exclude the NUL).

/// Serialises `pairs` in the proxy-wasm map format. An empty map is 4 zero bytes (the Rust SDK
/// reads the count unconditionally).
pub fn serialize<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let data_len: usize = pairs
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 2)
        .sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data_len);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Parses a serialised map; `None` if it is malformed. Empty input is an empty map.
pub fn deserialize(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if bytes.is_empty() || bytes == [0] {
        return Some(Vec::new());
    }
    let count = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    // cpp-host caps maps at 1024 pairs.
    if count > 1024 {
        return None;
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 8;
        let k = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        let v = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?) as usize;
        sizes.push((k, v));
    }
    let mut pos = 4 + count * 8;
    let mut pairs = Vec::with_capacity(count);
    for (k, v) in sizes {
        let key = bytes.get(pos..pos + k)?;
        pos += k + 1;
        let value = bytes.get(pos..pos + v)?;
        pos += v + 1;
        if pos > bytes.len() {
            return None;
        }
        pairs.push((key, value));
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_example() {
        // {"a":"1","b":"22"} from the ABI notes.
        let pairs = [(&b"a"[..], &b"1"[..]), (&b"b"[..], &b"22"[..])];
        let out = serialize(&pairs);
        assert_eq!(
            out,
            [
                2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'1', 0, b'b',
                0, b'2', b'2', 0
            ]
        );
        assert_eq!(deserialize(&out).unwrap(), pairs);
    }

    #[test]
    fn empty_and_malformed() {
        assert_eq!(serialize::<&[u8], &[u8]>(&[]), [0, 0, 0, 0]);
        assert_eq!(deserialize(&[]).unwrap(), Vec::<(&[u8], &[u8])>::new());
        assert!(deserialize(&[5, 0, 0, 0]).is_none());
        assert!(deserialize(&[1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, b'a', 0]).is_none());
    }
}
