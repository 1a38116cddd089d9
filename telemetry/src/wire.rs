//! The protobuf wire format, as much of it as OTLP needs: tags, varints, fixed-width numbers and
//! length-delimited fields, written into a `Vec<u8>`.
//!
//! A length-delimited field whose length is not known in advance (a span, an attribute whose value is
//! written as it is formatted) is [`open`]ed with a one-byte length and [`close`]d when its body is
//! written: a body of 128 bytes or more then moves right by the bytes its length needs beyond one.

pub(crate) const VARINT: u32 = 0;
pub(crate) const I64: u32 = 1;
pub(crate) const LEN: u32 = 2;
pub(crate) const I32: u32 = 5;

pub(crate) fn tag(buf: &mut Vec<u8>, field: u32, wire_type: u32) {
    varint(buf, u64::from(field << 3 | wire_type));
}

pub(crate) fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

pub(crate) fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes a length-delimited field of a small field number (< 16, a one-byte tag) takes.
pub(crate) fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

pub(crate) fn bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    tag(buf, field, LEN);
    varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

pub(crate) fn string(buf: &mut Vec<u8>, field: u32, text: &str) {
    bytes(buf, field, text.as_bytes());
}

pub(crate) fn fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    tag(buf, field, I64);
    buf.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn fixed32(buf: &mut Vec<u8>, field: u32, v: u32) {
    tag(buf, field, I32);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Starts a length-delimited field of unknown length; returns where its body starts, for [`close`].
pub(crate) fn open(buf: &mut Vec<u8>, field: u32) -> usize {
    tag(buf, field, LEN);
    buf.push(0);
    buf.len()
}

/// Ends the field [`open`] started at `body`: writes the length of what was written since.
pub(crate) fn close(buf: &mut Vec<u8>, body: usize) {
    let len = buf.len() - body;
    let width = varint_len(len as u64);
    if width > 1 {
        let end = buf.len();
        buf.resize(end + width - 1, 0);
        buf.copy_within(body..end, body + width - 1);
    }
    let mut v = len as u64;
    for byte in &mut buf[body - 1..body - 1 + width] {
        *byte = v as u8 & 0x7f | if v >= 0x80 { 0x80 } else { 0 };
        v >>= 7;
    }
}

/// Writes formatted text straight into the buffer (for a field [`open`]ed before).
pub(crate) struct Text<'b>(pub &'b mut Vec<u8>);

impl std::fmt::Write for Text<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths_match_the_encoding() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn an_opened_field_is_written_as_if_its_length_were_known() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut known = vec![9];
            bytes(&mut known, 3, &body);
            let mut opened = vec![9];
            let at = open(&mut opened, 3);
            opened.extend_from_slice(&body);
            close(&mut opened, at);
            assert_eq!(opened, known, "{len}");
        }
    }

    #[test]
    fn nested_opened_fields_get_their_own_lengths() {
        let inner_body = vec![7u8; 200];
        let mut inner = Vec::new();
        bytes(&mut inner, 1, &inner_body);
        let mut known = Vec::new();
        bytes(&mut known, 2, &[&[0x08, 0x01][..], &inner].concat());
        let mut opened = Vec::new();
        let outer = open(&mut opened, 2);
        opened.extend_from_slice(&[0x08, 0x01]);
        let at = open(&mut opened, 1);
        opened.extend_from_slice(&inner_body);
        close(&mut opened, at);
        close(&mut opened, outer);
        assert_eq!(opened, known);
    }
}
