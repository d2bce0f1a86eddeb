//! Incremental server-sent-events parser: bytes go in as the network delivers them (split
//! anywhere, even inside a multi-byte UTF-8 character or between `\r` and `\n`), and each
//! complete event's `data` comes out once its terminating blank line has arrived.
//!
//! Lines end with `\n`, `\r\n` or a lone `\r`; `:` lines are comments; `data` fields of one
//! event are joined with `\n`; other fields (`event`, `id`, `retry`) are ignored because the
//! OpenAI streams carry everything in `data`. Buffers are reused, so steady-state parsing does
//! not allocate.

/// Parser state carried between network chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line that has not ended yet.
    pending: Vec<u8>,
    /// The current event's `data`, lines joined by `\n`.
    data: Vec<u8>,
    /// Whether the current event has had a `data` field (an empty `data:` still counts).
    has_data: bool,
    /// The previous chunk ended with `\r`: a `\n` starting the next one belongs to that line end.
    skip_lf: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `chunk`, calling `on_event` with the data of each event it completes.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(&[u8])) {
        let mut rest = chunk;
        if self.skip_lf {
            self.skip_lf = false;
            if let Some(b'\n') = rest.first() {
                rest = &rest[1..];
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let terminator = rest[end];
            if self.pending.is_empty() {
                self.line(&rest[..end], &mut on_event);
            } else {
                self.pending.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut self.pending);
                self.line(&line, &mut on_event);
                self.pending = line;
                self.pending.clear();
            }
            rest = &rest[end + 1..];
            if terminator == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
        }
        self.pending.extend_from_slice(rest);
    }

    fn line(&mut self, line: &[u8], on_event: &mut impl FnMut(&[u8])) {
        if line.is_empty() {
            if self.has_data {
                on_event(&self.data);
            }
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], cuts: &[usize]) -> Vec<String> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            parser.feed(&input[start..cut], |data| {
                events.push(String::from_utf8(data.to_vec()).expect("whole UTF-8 events"))
            });
            start = cut;
        }
        events
    }

    const STREAM: &str = ": keep-alive comment\r\n\
        data: {\"choices\":[{\"text\":\"héllo 🌍\"}]}\r\n\r\n\
        event: message\n\
        id: 7\n\
        data: {\"choices\":[{\"text\":\" wörld\"}]}\n\n\
        data: first line\rdata: second line\r\r\
        data:no-space\n\n\
        data: [DONE]\n\n";

    fn expected() -> Vec<String> {
        vec![
            "{\"choices\":[{\"text\":\"héllo 🌍\"}]}".to_string(),
            "{\"choices\":[{\"text\":\" wörld\"}]}".to_string(),
            "first line\nsecond line".to_string(),
            "no-space".to_string(),
            "[DONE]".to_string(),
        ]
    }

    #[test]
    fn whole_stream_in_one_chunk() {
        assert_eq!(parse_in_pieces(STREAM.as_bytes(), &[]), expected());
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let bytes = STREAM.as_bytes();
        // Splits inside "é" and "🌍" (multi-byte) and between "\r" and "\n" are among these.
        for cut in 1..bytes.len() {
            assert_eq!(parse_in_pieces(bytes, &[cut]), expected(), "cut at {cut}");
        }
    }

    #[test]
    fn byte_at_a_time_and_two_cuts_give_the_same_events() {
        let bytes = STREAM.as_bytes();
        let all: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(parse_in_pieces(bytes, &all), expected());
        for a in (1..bytes.len()).step_by(7) {
            for b in (a..bytes.len()).step_by(5) {
                assert_eq!(parse_in_pieces(bytes, &[a, b]), expected(), "cuts {a},{b}");
            }
        }
    }

    #[test]
    fn an_event_is_not_emitted_before_its_blank_line() {
        let mut parser = SseParser::new();
        let mut n = 0;
        parser.feed(b"data: {\"a\":1}\n", |_| n += 1);
        assert_eq!(n, 0);
        parser.feed(b"\n", |_| n += 1);
        assert_eq!(n, 1);
    }

    #[test]
    fn comments_and_blank_lines_alone_emit_nothing_but_empty_data_does() {
        assert!(parse_in_pieces(b": ping\n\n\n\n", &[]).is_empty());
        assert_eq!(parse_in_pieces(b"data\n\n", &[]), vec![String::new()]);
    }
}
