//! Server-sent events as providers stream them (the WHATWG event-stream format): bytes
//! arrive in arbitrary pieces; an event ends at a blank line. Only `event:` and
//! `data:` matter to us; comments (`: ping`) and `id:`/`retry:` are skipped.
//! Also newline-delimited JSON (Ollama's streams): each line is handed over as the
//! data of an event, so every protocol's decoder takes the same input.

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// empty when the event has no `event:` line (OpenAI's style)
    pub event: String,
    pub data: String,
}

#[derive(Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
}

/// An upstream never needs this much for one line; more is a broken or hostile stream.
const MAX_LINE: usize = 8 * 1024 * 1024;

impl SseDecoder {
    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.buffer[start..].iter().position(|b| *b == b'\n') {
            let end = start + offset;
            let mut line = &self.buffer[start..end];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            let line = std::str::from_utf8(line).map_err(|_| "an event stream line is not UTF-8".to_owned())?;
            if line.is_empty() {
                if self.has_data || !self.event.is_empty() {
                    events.push(SseEvent {
                        event: std::mem::take(&mut self.event),
                        data: std::mem::take(&mut self.data),
                    });
                    self.has_data = false;
                }
            } else if let Some(value) = field(line, "data") {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            } else if let Some(value) = field(line, "event") {
                self.event = value.to_owned();
            }
            start = end + 1;
        }
        self.buffer.drain(..start);
        if self.buffer.len() > MAX_LINE {
            return Err("an event stream line is longer than 8 MiB".to_owned());
        }
        Ok(events)
    }
}

/// Splits a newline-delimited stream into lines, each an event's data.
#[derive(Default)]
pub struct LineDecoder {
    buffer: Vec<u8>,
}

impl LineDecoder {
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buffer.extend_from_slice(bytes);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.buffer[start..].iter().position(|b| *b == b'\n') {
            let line = &self.buffer[start..start + offset];
            let line = std::str::from_utf8(line).map_err(|_| "a stream line is not UTF-8".to_owned())?.trim();
            if !line.is_empty() {
                lines.push(SseEvent { event: String::new(), data: line.to_owned() });
            }
            start += offset + 1;
        }
        self.buffer.drain(..start);
        if self.buffer.len() > MAX_LINE {
            return Err("a stream line is longer than 8 MiB".to_owned());
        }
        Ok(lines)
    }
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?.strip_prefix(':')?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_anywhere() {
        let text = "{\"a\":1}\n\n{\"b\":2}\r\n";
        for split in 0..text.len() {
            let mut decoder = LineDecoder::default();
            let mut lines = decoder.feed(&text.as_bytes()[..split]).unwrap();
            lines.extend(decoder.feed(&text.as_bytes()[split..]).unwrap());
            let data: Vec<&str> = lines.iter().map(|l| l.data.as_str()).collect();
            assert_eq!(data, ["{\"a\":1}", "{\"b\":2}"], "split at {split}");
        }
    }

    #[test]
    fn events_split_anywhere() {
        let text = "event: a\ndata: {\"x\":1}\n\n: ping\n\ndata: one\r\ndata: two\r\n\r\ndata:[DONE]\n\n";
        for split in 0..text.len() {
            let mut decoder = SseDecoder::default();
            let mut events = decoder.feed(&text.as_bytes()[..split]).unwrap();
            events.extend(decoder.feed(&text.as_bytes()[split..]).unwrap());
            assert_eq!(
                events,
                vec![
                    SseEvent { event: "a".into(), data: "{\"x\":1}".into() },
                    SseEvent { event: String::new(), data: "one\ntwo".into() },
                    SseEvent { event: String::new(), data: "[DONE]".into() },
                ],
                "split at {split}"
            );
        }
    }
}
