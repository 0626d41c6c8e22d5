//! RESP2, the protocol Redis speaks: an encoder of commands and an incremental parser of
//! replies, both sans-IO and free of heap allocations.
//!
//! A command is an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`). A reply is one of
//! five types: simple string `+OK`, error `-ERR …`, integer `:5`, bulk string `$3\r\nabc`
//! (`$-1`: null) and array `*2\r\n…` (`*-1`: null). [`parse_reply`] reads the reply at the front
//! of a buffer that may end anywhere: it says "need more" for a partial reply, borrows from the
//! buffer for a whole one (an array's elements are walked lazily, see [`Array`]), and returns a
//! [`RespError`] for anything that is not RESP2 or breaks a limit; it never panics on input.
//!
//! Used on a load-generator thread (by [`crate::bench::redis`]) and by the blocking set-up
//! connection; nothing here lives on a shard.

use std::fmt;

use crate::constants::{REDIS_REPLY_BYTES_MAX, REDIS_REPLY_DEPTH_MAX, REDIS_REPLY_ELEMENTS_MAX};

/// Appends the command `args` (an array of bulk strings) to `out`.
pub fn push_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    push_header(out, b'*', args.len());
    for arg in args {
        push_header(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_header(out: &mut Vec<u8>, kind: u8, len: usize) {
    out.push(kind);
    out.extend_from_slice(Decimal::new(len as u64).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A number written in decimal on the stack, to pass as a command argument.
#[derive(Clone, Copy)]
pub struct Decimal {
    digits: [u8; 20],
    start: u8,
}

impl Decimal {
    pub fn new(mut value: u64) -> Decimal {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        Decimal {
            digits,
            start: start as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[usize::from(self.start)..]
    }
}

/// One reply, borrowed from the buffer it was parsed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `+text`
    Simple(&'a [u8]),
    /// `-text`: the command failed.
    Error(&'a [u8]),
    /// `:n`
    Integer(i64),
    /// `$len` then the bytes; `None` is the null bulk string (`$-1`).
    Bulk(Option<&'a [u8]>),
    /// `*len` then the elements; `None` is the null array (`*-1`).
    Array(Option<Array<'a>>),
}

/// The elements of an array reply, already checked to be whole and well formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Array<'a> {
    len: usize,
    /// The encoded elements, back to back.
    elements: &'a [u8],
}

impl<'a> Array<'a> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> Elements<'a> {
        Elements {
            rest: self.elements,
            left: self.len,
        }
    }

    /// The element at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<Reply<'a>> {
        self.iter().nth(index)
    }
}

/// Walks an [`Array`]'s elements in order.
pub struct Elements<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for Elements<'a> {
    type Item = Reply<'a>;

    fn next(&mut self) -> Option<Reply<'a>> {
        if self.left == 0 {
            return None;
        }
        // The array was parsed whole before it was handed out, so every element parses again;
        // should that ever fail, the walk just ends early.
        let (reply, len) = element(self.rest, 0, 0).ok().flatten()?;
        self.rest = &self.rest[len..];
        self.left -= 1;
        Some(reply)
    }
}

impl Reply<'_> {
    /// A short description for error messages: the type and the start of any text.
    pub fn describe(&self) -> String {
        let text = |bytes: &[u8]| {
            let shown = &bytes[..bytes.len().min(80)];
            String::from_utf8_lossy(shown).into_owned()
        };
        match self {
            Reply::Simple(bytes) => format!("the status `{}`", text(bytes)),
            Reply::Error(bytes) => format!("the error `{}`", text(bytes)),
            Reply::Integer(value) => format!("the integer {value}"),
            Reply::Bulk(None) => "a null bulk string".into(),
            Reply::Bulk(Some(bytes)) => format!("the bulk string `{}`", text(bytes)),
            Reply::Array(None) => "a null array".into(),
            Reply::Array(Some(array)) => format!("an array of {} elements", array.len()),
        }
    }
}

/// Why bytes are not a RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespError {
    /// The first byte of a reply is none of `+ - : $ *`.
    UnknownType(u8),
    /// A line does not end in `\r\n`.
    BadLineEnd,
    /// An integer or a length is not a decimal number that fits.
    BadNumber(String),
    /// A bulk string's bytes are not followed by `\r\n`.
    BadBulkEnd,
    /// A bulk string or a whole reply is longer than `REDIS_REPLY_BYTES_MAX`.
    TooLong { len: usize },
    /// An array has more than `REDIS_REPLY_ELEMENTS_MAX` elements.
    TooManyElements { len: usize },
    /// Arrays are nested deeper than `REDIS_REPLY_DEPTH_MAX`.
    TooDeep,
}

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespError::UnknownType(byte) => write!(
                f,
                "a reply starts with the byte {byte:#04x} ({:?}), which is no RESP2 type; is the address a Redis server?",
                char::from(*byte)
            ),
            RespError::BadLineEnd => write!(f, "a line does not end in CR LF"),
            RespError::BadNumber(text) => write!(f, "`{text}` is not a valid integer or length"),
            RespError::BadBulkEnd => write!(f, "a bulk string is not followed by CR LF"),
            RespError::TooLong { len } => write!(
                f,
                "a reply of {len} bytes or more exceeds the limit of {REDIS_REPLY_BYTES_MAX} bytes"
            ),
            RespError::TooManyElements { len } => write!(
                f,
                "an array of {len} elements exceeds the limit of {REDIS_REPLY_ELEMENTS_MAX}"
            ),
            RespError::TooDeep => write!(
                f,
                "arrays are nested deeper than the limit of {REDIS_REPLY_DEPTH_MAX}"
            ),
        }
    }
}

impl std::error::Error for RespError {}

/// Parses the reply at the front of `input`: `Ok(None)` when it has not all arrived yet, else
/// the reply and how many bytes it took.
pub fn parse_reply(input: &[u8]) -> Result<Option<(Reply<'_>, usize)>, RespError> {
    let parsed = element(input, 0, 0)?;
    if parsed.is_none() && input.len() >= REDIS_REPLY_BYTES_MAX {
        return Err(RespError::TooLong { len: input.len() });
    }
    Ok(parsed)
}

/// Longest line that holds an integer or a length: a sign and 19 digits.
const NUMBER_LINE_BYTES_MAX: usize = 20;

/// Parses the element that starts at `start`, `depth` arrays deep.
fn element(
    input: &[u8],
    start: usize,
    depth: usize,
) -> Result<Option<(Reply<'_>, usize)>, RespError> {
    let Some(&kind) = input.get(start) else {
        return Ok(None);
    };
    let line_max = match kind {
        b'+' | b'-' => REDIS_REPLY_BYTES_MAX,
        b':' | b'$' | b'*' => NUMBER_LINE_BYTES_MAX,
        other => return Err(RespError::UnknownType(other)),
    };
    let Some((line, after)) = line(input, start + 1, line_max)? else {
        return Ok(None);
    };
    let reply = match kind {
        b'+' => Reply::Simple(line),
        b'-' => Reply::Error(line),
        b':' => Reply::Integer(parse_integer(line)?),
        b'$' => return bulk(input, line, after),
        _ => return array(input, line, after, depth),
    };
    Ok(Some((reply, after)))
}

fn bulk<'a>(
    input: &'a [u8],
    header: &[u8],
    start: usize,
) -> Result<Option<(Reply<'a>, usize)>, RespError> {
    let Some(len) = parse_length(header)? else {
        return Ok(Some((Reply::Bulk(None), start)));
    };
    if len >= REDIS_REPLY_BYTES_MAX {
        return Err(RespError::TooLong { len });
    }
    let end = start + len;
    let Some(terminator) = input.get(end..end + 2) else {
        return Ok(None);
    };
    if terminator != b"\r\n" {
        return Err(RespError::BadBulkEnd);
    }
    Ok(Some((Reply::Bulk(Some(&input[start..end])), end + 2)))
}

fn array<'a>(
    input: &'a [u8],
    header: &[u8],
    start: usize,
    depth: usize,
) -> Result<Option<(Reply<'a>, usize)>, RespError> {
    let Some(len) = parse_length(header)? else {
        return Ok(Some((Reply::Array(None), start)));
    };
    if len > REDIS_REPLY_ELEMENTS_MAX {
        return Err(RespError::TooManyElements { len });
    }
    if depth >= REDIS_REPLY_DEPTH_MAX {
        return Err(RespError::TooDeep);
    }
    let mut end = start;
    for _ in 0..len {
        let Some((_, next)) = element(input, end, depth + 1)? else {
            return Ok(None);
        };
        end = next;
    }
    let elements = &input[start..end];
    Ok(Some((Reply::Array(Some(Array { len, elements })), end)))
}

/// The line that starts at `start` (without its `\r\n`) and where the next one starts.
fn line(input: &[u8], start: usize, line_max: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let rest = &input[start.min(input.len())..];
    let Some(newline) = rest.iter().position(|&byte| byte == b'\n') else {
        if rest.len() > line_max {
            return Err(RespError::BadLineEnd);
        }
        return Ok(None);
    };
    if newline == 0 || rest[newline - 1] != b'\r' {
        return Err(RespError::BadLineEnd);
    }
    let line = &rest[..newline - 1];
    if line.contains(&b'\r') {
        return Err(RespError::BadLineEnd);
    }
    Ok(Some((line, start + newline + 1)))
}

fn parse_integer(text: &[u8]) -> Result<i64, RespError> {
    let bad = || RespError::BadNumber(String::from_utf8_lossy(text).into_owned());
    let (negative, digits) = match text.split_first() {
        Some((b'-', digits)) => (true, digits),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let mut value: i64 = 0;
    for &digit in digits {
        let digit = i64::from(digit - b'0');
        value = value
            .checked_mul(10)
            .and_then(|value| {
                if negative {
                    value.checked_sub(digit)
                } else {
                    value.checked_add(digit)
                }
            })
            .ok_or_else(bad)?;
    }
    Ok(value)
}

/// A bulk string's or an array's length: `None` for the null value (`-1`).
fn parse_length(text: &[u8]) -> Result<Option<usize>, RespError> {
    match parse_integer(text)? {
        -1 => Ok(None),
        len if len >= 0 => Ok(Some(len as usize)),
        _ => Err(RespError::BadNumber(
            String::from_utf8_lossy(text).into_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn whole(input: &[u8]) -> (Reply<'_>, usize) {
        parse_reply(input)
            .expect("well formed")
            .expect("a whole reply")
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        push_command(
            &mut out,
            &[b"ZINCRBY", b"k", Decimal::new(10).as_bytes(), b""],
        );
        assert_eq!(
            out,
            b"*4\r\n$7\r\nZINCRBY\r\n$1\r\nk\r\n$2\r\n10\r\n$0\r\n\r\n".to_vec()
        );
        // What the encoder writes, the parser reads back element by element.
        let (reply, len) = whole(&out);
        assert_eq!(len, out.len());
        let Reply::Array(Some(array)) = reply else {
            panic!("{reply:?}")
        };
        let args: Vec<Reply<'_>> = array.iter().collect();
        assert_eq!(
            args,
            [
                Reply::Bulk(Some(b"ZINCRBY")),
                Reply::Bulk(Some(b"k")),
                Reply::Bulk(Some(b"10")),
                Reply::Bulk(Some(b""))
            ]
        );
    }

    #[test]
    fn decimals_have_every_digit() {
        for value in [0, 7, 10, 4_294_967_297, u64::MAX] {
            assert_eq!(Decimal::new(value).as_bytes(), value.to_string().as_bytes());
        }
    }

    #[test]
    fn every_reply_type_parses() {
        assert_eq!(whole(b"+OK\r\n"), (Reply::Simple(b"OK"), 5));
        assert_eq!(
            whole(b"-ERR unknown command\r\n"),
            (Reply::Error(b"ERR unknown command"), 22)
        );
        assert_eq!(whole(b":-42\r\n"), (Reply::Integer(-42), 6));
        assert_eq!(
            whole(b":9223372036854775807\r\n").0,
            Reply::Integer(i64::MAX)
        );
        assert_eq!(
            whole(b":-9223372036854775808\r\n").0,
            Reply::Integer(i64::MIN)
        );
        assert_eq!(
            whole(b"$5\r\nhe\r\no\r\n"),
            (Reply::Bulk(Some(b"he\r\no")), 11)
        );
        assert_eq!(whole(b"$0\r\n\r\n"), (Reply::Bulk(Some(b"")), 6));
        assert_eq!(whole(b"$-1\r\n"), (Reply::Bulk(None), 5));
        assert_eq!(whole(b"*-1\r\n"), (Reply::Array(None), 5));
        let (empty, _) = whole(b"*0\r\n");
        assert!(matches!(empty, Reply::Array(Some(array)) if array.is_empty()));
    }

    #[test]
    fn nested_arrays_are_walked_in_order() {
        let input = b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n+x\r\n:7\r\n";
        let (reply, len) = whole(input);
        assert_eq!(len, input.len() - 4, "the next reply is left alone");
        let Reply::Array(Some(outer)) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(outer.len(), 3);
        assert_eq!(outer.get(0), Some(Reply::Integer(1)));
        assert_eq!(outer.get(2), Some(Reply::Simple(b"x")));
        assert_eq!(outer.get(3), None);
        let Some(Reply::Array(Some(inner))) = outer.get(1) else {
            panic!("{outer:?}")
        };
        assert_eq!(
            inner.iter().collect::<Vec<_>>(),
            [Reply::Bulk(Some(b"a")), Reply::Bulk(None)]
        );
    }

    #[test]
    fn every_prefix_of_a_reply_asks_for_more() {
        let input: &[u8] = b"*2\r\n$7\r\nclaimed\r\n*2\r\n:100\r\n+OK\r\n";
        for end in 0..input.len() {
            assert_eq!(
                parse_reply(&input[..end]),
                Ok(None),
                "prefix of {end} bytes"
            );
        }
        assert_eq!(whole(input).1, input.len());
    }

    #[test]
    fn pipelined_replies_parse_one_after_another() {
        let input = b":1\r\n$2\r\n10\r\n-ERR x\r\n*0\r\n+OK";
        let mut offset = 0;
        let mut replies = Vec::new();
        while let Some((reply, len)) = parse_reply(&input[offset..]).unwrap() {
            replies.push(reply);
            offset += len;
        }
        assert_eq!(replies.len(), 4);
        assert_eq!(replies[2], Reply::Error(b"ERR x"));
        assert_eq!(&input[offset..], b"+OK", "the partial reply stays");
    }

    #[test]
    fn malformed_replies_are_errors() {
        let cases: [(&[u8], RespError); 12] = [
            (b"?what\r\n", RespError::UnknownType(b'?')),
            (b"\x00\x01", RespError::UnknownType(0)),
            (b"+OK\n", RespError::BadLineEnd),
            (b"+O\rK\r\n", RespError::BadLineEnd),
            (b":12a\r\n", RespError::BadNumber("12a".into())),
            (b":\r\n", RespError::BadNumber("".into())),
            (
                b":99999999999999999999\r\n",
                RespError::BadNumber("99999999999999999999".into()),
            ),
            (b"$-2\r\n", RespError::BadNumber("-2".into())),
            (b"$3\r\nabcd\r\n", RespError::BadBulkEnd),
            (b":1111111111111111111111111", RespError::BadLineEnd),
            (b"*2000\r\n", RespError::TooManyElements { len: 2000 }),
            (b"$99999999\r\n", RespError::TooLong { len: 99_999_999 }),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_reply(input),
                Err(expected),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn limits_hold_on_deep_and_endless_replies() {
        let deep = b"*1\r\n".repeat(REDIS_REPLY_DEPTH_MAX + 1);
        assert_eq!(parse_reply(&deep), Err(RespError::TooDeep));
        // A simple string that never ends is refused once it outgrows any reply.
        let mut endless = vec![b'+'];
        endless.resize(REDIS_REPLY_BYTES_MAX, b'a');
        assert_eq!(
            parse_reply(&endless),
            Err(RespError::TooLong {
                len: REDIS_REPLY_BYTES_MAX
            })
        );
        assert_eq!(parse_reply(&endless[..1000]), Ok(None));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let message = parse_reply(b"TROV").unwrap_err().to_string();
        assert!(message.contains("no RESP2 type"), "{message}");
        assert!(message.contains("Redis server"), "{message}");
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(
            input in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            if let Ok(Some((_, len))) = parse_reply(&input) {
                prop_assert!(len <= input.len());
            }
        }

        #[test]
        fn corrupted_replies_parse_or_fail_without_panicking(
            position in any::<prop::sample::Index>(),
            value in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut input =
                b"*3\r\n$7\r\nclaimed\r\n*2\r\n:-100\r\n$-1\r\n+OK\r\n-ERR no\r\n".to_vec();
            let at = position.index(input.len());
            input[at] = value;
            input.truncate(cut.index(input.len() + 1));
            if let Ok(Some((reply, len))) = parse_reply(&input) {
                prop_assert!(len <= input.len());
                if let Reply::Array(Some(array)) = reply {
                    prop_assert_eq!(array.iter().count(), array.len());
                }
            }
        }

        #[test]
        fn commands_round_trip_through_the_parser(
            args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..12),
        ) {
            let mut out = Vec::new();
            let borrowed: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            push_command(&mut out, &borrowed);
            let (reply, len) = parse_reply(&out).unwrap().unwrap();
            prop_assert_eq!(len, out.len());
            let Reply::Array(Some(array)) = reply else {
                return Err(TestCaseError::fail("not an array"));
            };
            let parsed: Vec<&[u8]> = array
                .iter()
                .map(|element| match element {
                    Reply::Bulk(Some(bytes)) => bytes,
                    _ => b"not a bulk string",
                })
                .collect();
            prop_assert_eq!(parsed, borrowed);
        }
    }
}
