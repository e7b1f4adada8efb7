//! A minimal protocol-buffers encoder, enough to write ONNX models: varints, fixed32,
//! length-delimited fields and packed repeated scalars. Messages are built field by field.

/// One protobuf message being encoded.
#[derive(Debug, Default, Clone)]
pub struct Msg {
    buf: Vec<u8>,
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

impl Msg {
    pub fn new() -> Self {
        Self::default()
    }

    fn key(&mut self, field: u32, wire: u8) {
        varint(&mut self.buf, ((field as u64) << 3) | wire as u64);
    }

    /// An int32/int64/enum/bool field (negative values take ten bytes, as protobuf specifies).
    pub fn int(mut self, field: u32, v: i64) -> Self {
        self.key(field, 0);
        varint(&mut self.buf, v as u64);
        self
    }

    pub fn float(mut self, field: u32, v: f32) -> Self {
        self.key(field, 5);
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(mut self, field: u32, v: &[u8]) -> Self {
        self.key(field, 2);
        varint(&mut self.buf, v.len() as u64);
        self.buf.extend_from_slice(v);
        self
    }

    pub fn string(self, field: u32, v: &str) -> Self {
        self.bytes(field, v.as_bytes())
    }

    pub fn msg(self, field: u32, m: &Msg) -> Self {
        self.bytes(field, &m.buf)
    }

    /// A packed repeated int64 field.
    pub fn ints(self, field: u32, v: &[i64]) -> Self {
        let mut packed = Vec::new();
        for &x in v {
            varint(&mut packed, x as u64);
        }
        self.bytes(field, &packed)
    }

    /// A packed repeated float field.
    pub fn floats(self, field: u32, v: &[f32]) -> Self {
        let packed: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.bytes(field, &packed)
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_protobuf() {
        // Field 1 varint 150 is the protobuf documentation's example: 08 96 01.
        assert_eq!(Msg::new().int(1, 150).into_bytes(), vec![0x08, 0x96, 0x01]);
        // Field 2 string "testing": 12 07 74 65 73 74 69 6e 67.
        assert_eq!(Msg::new().string(2, "testing").into_bytes(), b"\x12\x07testing".to_vec());
        // Packed field 4 of [3, 270, 86942]: 22 06 03 8E 02 9E A7 05.
        assert_eq!(Msg::new().ints(4, &[3, 270, 86942]).into_bytes(), vec![0x22, 0x06, 0x03, 0x8E, 0x02, 0x9E, 0xA7, 0x05]);
        // -1 as int64 is ten bytes.
        assert_eq!(Msg::new().int(1, -1).len(), 11);
        assert_eq!(Msg::new().float(2, 1.0).into_bytes(), vec![0x15, 0, 0, 0x80, 0x3f]);
    }
}
