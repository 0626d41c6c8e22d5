//! `EtcdClient`: the coordinator's requests made over etcd's v3 JSON gateway (HTTP/1.1, ureq,
//! blocking, no TLS), and its replies parsed back.
//!
//! Uses only the endpoints common to etcd 3.4 to 3.6: `/v3/kv/range`, `/v3/kv/put`,
//! `/v3/kv/txn`, `/v3/lease/grant`, `/v3/lease/keepalive`, `/v3/lease/revoke`,
//! `/v3/lease/timetolive` and `/v3/watch`. Keys and values travel base64-encoded, 64-bit
//! integers as JSON strings, and fields equal to zero are left out of replies. With several
//! endpoints, a request that cannot reach one tries the next.
//!
//! Lives on a node's control thread (or the `trove cluster` command's own thread); every call
//! blocks for at most the timeout it was built with.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::cluster::coordinator::{KeyValue, Request, Response, WatchChange, WatchMessage};
use crate::constants::{CLUSTER_ENDPOINTS_MAX, CLUSTER_REPLY_BYTES_MAX};

/// Parses a `--cluster`/`--etcd` list: `http://HOST:PORT[,…]` (a bare `HOST:PORT` means http).
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, String> {
    let mut endpoints = Vec::new();
    for item in list
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let endpoint = if let Some(rest) = item.strip_prefix("http://") {
            rest
        } else if item.starts_with("https://") {
            return Err(format!(
                "{item}: TLS to etcd is not supported yet; give its plain http:// client URL"
            ));
        } else if item.contains("://") {
            return Err(format!(
                "{item}: give etcd's client URL as http://HOST:PORT"
            ));
        } else {
            item
        };
        let endpoint = endpoint.trim_end_matches('/');
        let valid_port = endpoint
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid_port || endpoint.contains('/') {
            return Err(format!(
                "{item}: give etcd's client URL as http://HOST:PORT, e.g. http://127.0.0.1:2379"
            ));
        }
        endpoints.push(format!("http://{endpoint}"));
    }
    if endpoints.is_empty() {
        return Err("no etcd endpoint given; e.g. --cluster http://127.0.0.1:2379".into());
    }
    if endpoints.len() > CLUSTER_ENDPOINTS_MAX {
        return Err(format!(
            "{} etcd endpoints given; at most {CLUSTER_ENDPOINTS_MAX}",
            endpoints.len()
        ));
    }
    Ok(endpoints)
}

/// A blocking client of etcd's JSON gateway. See the module doc.
pub struct EtcdClient {
    endpoints: Vec<String>,
    current: usize,
    agent: ureq::Agent,
}

impl EtcdClient {
    /// A client of `endpoints` (from [`parse_endpoints`]) whose calls each take at most `timeout`.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> EtcdClient {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .new_agent();
        EtcdClient {
            endpoints,
            current: 0,
            agent,
        }
    }

    /// The endpoint the next request goes to.
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.current]
    }

    /// Makes `request` and returns etcd's reply, or why there is none.
    pub fn execute(&mut self, request: &Request) -> Result<Response, String> {
        match request {
            Request::LeaseGrant { ttl_s } => {
                let reply = self.post("/v3/lease/grant", json!({ "TTL": ttl_s.to_string() }))?;
                Ok(Response::LeaseGranted {
                    lease: int(&reply, "ID")?,
                    ttl_s: int(&reply, "TTL")?,
                })
            }
            Request::LeaseKeepAlive { lease } => {
                let reply = self.post("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))?;
                let result = reply.get("result").ok_or_else(|| {
                    format!("etcd's keepalive reply has no result: {}", excerpt(&reply))
                })?;
                Ok(Response::LeaseKept {
                    ttl_s: int(result, "TTL")?,
                })
            }
            Request::Put { key, value, lease } => {
                let reply = self.post("/v3/kv/put", put_body(key, value, *lease))?;
                Ok(Response::Put {
                    revision: revision(&reply)?,
                })
            }
            Request::PutAll { puts } => {
                let puts = puts
                    .iter()
                    .map(|(key, value)| put_body(key, value, 0))
                    .collect::<Vec<_>>();
                self.txn(&[], &puts)
            }
            Request::RangePrefix { prefix } => self.range_prefix(prefix, None),
            Request::RangePrefixChanged {
                prefix,
                after_revision,
            } => self.range_prefix(prefix, Some(after_revision + 1)),
            Request::Revision { prefix } => {
                let mut body = prefix_range(prefix);
                body["count_only"] = Value::Bool(true);
                let reply = self.post("/v3/kv/range", body)?;
                Ok(Response::Revision {
                    revision: revision(&reply)?,
                })
            }
            Request::CreateIfAbsent { key, value, lease } => {
                let compare = [compare(key, "CREATE", "create_revision", 0)];
                self.txn(&compare, &[put_body(key, value, *lease)])
            }
            Request::CompareAndSwap {
                key,
                value,
                expect_mod_revision,
                guard_key,
                guard_create_revision,
            } => {
                let compare = [
                    compare(key, "MOD", "mod_revision", *expect_mod_revision),
                    compare(
                        guard_key,
                        "CREATE",
                        "create_revision",
                        *guard_create_revision,
                    ),
                ];
                self.txn(&compare, &[put_body(key, value, 0)])
            }
        }
    }

    /// The keys under `prefix`, only those put at or after `min_mod_revision` if given.
    fn range_prefix(
        &mut self,
        prefix: &str,
        min_mod_revision: Option<u64>,
    ) -> Result<Response, String> {
        let mut body = prefix_range(prefix);
        if let Some(min) = min_mod_revision {
            body["min_mod_revision"] = Value::String(min.to_string());
        }
        let reply = self.post("/v3/kv/range", body)?;
        let kvs = match reply.get("kvs") {
            None => Vec::new(),
            Some(Value::Array(kvs)) => kvs.iter().map(key_value).collect::<Result<_, _>>()?,
            Some(other) => return Err(format!("etcd's kvs is not a list: {}", excerpt(other))),
        };
        Ok(Response::Range {
            revision: revision(&reply)?,
            kvs,
        })
    }

    fn txn(&mut self, compare: &[Value], puts: &[Value]) -> Result<Response, String> {
        let success: Vec<Value> = puts
            .iter()
            .map(|put| json!({ "request_put": put }))
            .collect();
        let body = json!({ "compare": compare, "success": success });
        let reply = self.post("/v3/kv/txn", body)?;
        Ok(Response::Txn {
            succeeded: reply.get("succeeded").and_then(Value::as_bool) == Some(true),
            revision: revision(&reply)?,
        })
    }

    /// How many seconds `lease` has left (0 or less: etcd no longer has it).
    pub fn lease_time_to_live(&mut self, lease: i64) -> Result<i64, String> {
        let reply = self.post("/v3/lease/timetolive", json!({ "ID": lease.to_string() }))?;
        int(&reply, "TTL")
    }

    /// Ends `lease` now, deleting the keys bound to it.
    pub fn lease_revoke(&mut self, lease: i64) -> Result<(), String> {
        self.post("/v3/lease/revoke", json!({ "ID": lease.to_string() }))
            .map(drop)
    }

    /// POSTs `body` to `path`, trying each endpoint once from the current one.
    fn post(&mut self, path: &str, body: Value) -> Result<Value, String> {
        let body = body.to_string();
        let mut last_error = String::new();
        for _ in 0..self.endpoints.len() {
            let url = format!("{}{path}", self.endpoints[self.current]);
            match self.post_once(&url, &body) {
                Ok(reply) => return Ok(reply),
                Err(PostError::Refused(message)) => return Err(message),
                Err(PostError::Unreachable(message)) => last_error = message,
            }
            self.current = (self.current + 1) % self.endpoints.len();
        }
        Err(last_error)
    }

    fn post_once(&self, url: &str, body: &str) -> Result<Value, PostError> {
        let mut response = self
            .agent
            .post(url)
            .header("content-type", "application/json")
            .send(body)
            .map_err(|error| PostError::Unreachable(format!("etcd at {url}: {error}")))?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(CLUSTER_REPLY_BYTES_MAX)
            .read_to_string()
            .map_err(|error| PostError::Unreachable(format!("etcd at {url}: {error}")))?;
        let reply: Value = serde_json::from_str(&text).map_err(|error| {
            PostError::Unreachable(format!(
                "etcd at {url} answered something not JSON: {error}"
            ))
        })?;
        if !status.is_success() {
            let message = reply
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            return Err(PostError::Refused(format!(
                "etcd at {url} refused the request ({status}): {message}"
            )));
        }
        Ok(reply)
    }

    /// Watches every key under `prefix` from `start_revision`, calling `on_message` with the
    /// watch's start and then each batch of changes, in revision order, until the stream ends
    /// or `on_message` returns false. Returns why it ended. Blocks; meant for a thread of its
    /// own.
    pub fn watch_prefix(
        endpoint: &str,
        prefix: &str,
        start_revision: u64,
        mut on_message: impl FnMut(WatchMessage) -> bool,
    ) -> Result<(), String> {
        // No global timeout: a watch is idle for as long as nothing changes.
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        let body = json!({ "create_request": {
            "key": BASE64.encode(prefix),
            "range_end": BASE64.encode(prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
        }});
        let url = format!("{endpoint}/v3/watch");
        let mut response = agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body.to_string())
            .map_err(|error| format!("etcd watch at {url}: {error}"))?;
        if !response.status().is_success() {
            return Err(format!("etcd watch at {url}: status {}", response.status()));
        }
        let mut reader = BufReader::new(response.body_mut().with_config().limit(u64::MAX).reader());
        let mut line = Vec::new();
        // One JSON object per line; each line is bounded like any other reply.
        while read_line_bounded(&mut reader, &mut line)
            .map_err(|error| format!("etcd watch at {url}: {error}"))?
        {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let message: Value = serde_json::from_slice(&line)
                .map_err(|error| format!("etcd watch at {url}: not JSON: {error}"))?;
            let result = message.get("result").unwrap_or(&message);
            let message =
                watch_message(result).map_err(|error| format!("etcd watch at {url}: {error}"))?;
            if let Some(message) = message {
                if !on_message(message) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// What one line of a watch stream says: `None` for a line that matters to no one (progress
/// notifications, an empty batch).
fn watch_message(result: &Value) -> Result<Option<WatchMessage>, String> {
    if result.get("canceled").and_then(Value::as_bool) == Some(true) {
        return Err(format!("etcd cancelled the watch: {}", excerpt(result)));
    }
    if result.get("created").and_then(Value::as_bool) == Some(true) {
        return Ok(Some(WatchMessage::Started {
            revision: revision(result)?,
        }));
    }
    let Some(events) = result.get("events") else {
        return Ok(None);
    };
    let Value::Array(events) = events else {
        return Err(format!("its events are not a list: {}", excerpt(events)));
    };
    let changes = events
        .iter()
        .map(watch_change)
        .collect::<Result<Vec<_>, _>>()?;
    let Some(revision) = changes.last().map(WatchChange::revision) else {
        return Ok(None);
    };
    Ok(Some(WatchMessage::Changes { revision, changes }))
}

/// One event of a watch: etcd's JSON leaves the type out for a put (its enum's zero).
fn watch_change(event: &Value) -> Result<WatchChange, String> {
    let kv = event
        .get("kv")
        .ok_or_else(|| format!("an event has no kv: {}", excerpt(event)))?;
    match event.get("type").and_then(Value::as_str) {
        None | Some("PUT") => Ok(WatchChange::Put(key_value(kv)?)),
        Some("DELETE") => Ok(WatchChange::Delete {
            key: key_value(kv)?.key,
            revision: unsigned(kv, "mod_revision")?,
        }),
        Some(other) => Err(format!("an event of unknown type {other:?}")),
    }
}

/// Reads one line (without its newline) into `line`, refusing lines longer than
/// `CLUSTER_REPLY_BYTES_MAX`. False at the end of the stream.
fn read_line_bounded(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<bool> {
    line.clear();
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(!line.is_empty());
        }
        let (taken, done) = match available.iter().position(|&byte| byte == b'\n') {
            Some(end) => (end + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..taken]);
        reader.consume(taken);
        if line.len() as u64 > CLUSTER_REPLY_BYTES_MAX {
            return Err(std::io::Error::other("a message longer than the limit"));
        }
        if done {
            line.pop();
            return Ok(true);
        }
    }
}

enum PostError {
    /// Not reached, or no usable answer: worth trying another endpoint.
    Unreachable(String),
    /// etcd answered and refused: another endpoint would refuse too.
    Refused(String),
}

/// The end of the range of every key starting with `prefix`: the prefix with its last byte + 1.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The body of a range over every key starting with `prefix`.
fn prefix_range(prefix: &str) -> Value {
    json!({
        "key": BASE64.encode(prefix),
        "range_end": BASE64.encode(prefix_end(prefix)),
    })
}

fn put_body(key: &str, value: &[u8], lease: i64) -> Value {
    let mut put = json!({ "key": BASE64.encode(key), "value": BASE64.encode(value) });
    if lease != 0 {
        put["lease"] = Value::String(lease.to_string());
    }
    put
}

fn compare(key: &str, target: &str, field: &str, revision: u64) -> Value {
    json!({
        "key": BASE64.encode(key),
        "target": target,
        "result": "EQUAL",
        field: revision.to_string(),
    })
}

/// An int64 field, which the gateway writes as a string and leaves out when zero.
fn int(reply: &Value, field: &str) -> Result<i64, String> {
    match reply.get(field) {
        None => Ok(0),
        Some(Value::String(text)) => text
            .parse()
            .map_err(|_| format!("etcd's {field} is not a number: {text:?}")),
        Some(Value::Number(number)) => number
            .as_i64()
            .ok_or_else(|| format!("etcd's {field} is not an integer: {number}")),
        Some(other) => Err(format!(
            "etcd's {field} is not a number: {}",
            excerpt(other)
        )),
    }
}

fn unsigned(reply: &Value, field: &str) -> Result<u64, String> {
    let value = int(reply, field)?;
    u64::try_from(value).map_err(|_| format!("etcd's {field} is negative: {value}"))
}

fn revision(reply: &Value) -> Result<u64, String> {
    let header = reply
        .get("header")
        .ok_or_else(|| format!("etcd's reply has no header: {}", excerpt(reply)))?;
    unsigned(header, "revision")
}

fn bytes(kv: &Value, field: &str) -> Result<Vec<u8>, String> {
    match kv.get(field) {
        None => Ok(Vec::new()),
        Some(Value::String(text)) => BASE64
            .decode(text)
            .map_err(|error| format!("etcd's {field} is not base64: {error}")),
        Some(other) => Err(format!(
            "etcd's {field} is not a string: {}",
            excerpt(other)
        )),
    }
}

fn key_value(kv: &Value) -> Result<KeyValue, String> {
    let key = String::from_utf8(bytes(kv, "key")?)
        .map_err(|_| "etcd returned a key that is not UTF-8".to_owned())?;
    Ok(KeyValue {
        key,
        value: bytes(kv, "value")?,
        create_revision: unsigned(kv, "create_revision")?,
        mod_revision: unsigned(kv, "mod_revision")?,
        lease: int(kv, "lease")?,
    })
}

/// The start of a JSON value, for error messages.
fn excerpt(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(120) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_lists_are_checked_with_a_sentence_that_says_what_to_give() {
        assert_eq!(
            parse_endpoints("http://127.0.0.1:2379, 10.0.0.2:2379/").unwrap(),
            vec!["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert!(
            parse_endpoints("https://h:2379")
                .unwrap_err()
                .contains("TLS")
        );
        assert!(
            parse_endpoints("h")
                .unwrap_err()
                .contains("http://HOST:PORT")
        );
        assert!(
            parse_endpoints("http://h:99999")
                .unwrap_err()
                .contains("http://HOST:PORT")
        );
        assert!(
            parse_endpoints("ftp://h:1")
                .unwrap_err()
                .contains("client URL")
        );
        assert!(
            parse_endpoints(" , ")
                .unwrap_err()
                .contains("no etcd endpoint")
        );
        let many = vec!["h:1"; CLUSTER_ENDPOINTS_MAX + 1].join(",");
        assert!(parse_endpoints(&many).unwrap_err().contains("at most"));
    }

    #[test]
    fn a_prefix_range_ends_right_after_the_prefix() {
        assert_eq!(prefix_end("/trove/a/"), b"/trove/a0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn replies_are_read_the_way_the_gateway_writes_them() {
        let reply: Value = serde_json::from_str(
            r#"{"header":{"revision":"7"},"kvs":[{"key":"L2E=","create_revision":"2",
                "mod_revision":"7","version":"1","value":"aGk=","lease":"99"},
                {"key":"L2I=","create_revision":"3","mod_revision":"3"}],"count":"2"}"#,
        )
        .unwrap();
        assert_eq!(revision(&reply).unwrap(), 7);
        let kvs = reply["kvs"].as_array().unwrap();
        let first = key_value(&kvs[0]).unwrap();
        assert_eq!(
            (first.key.as_str(), &first.value[..], first.lease),
            ("/a", &b"hi"[..], 99)
        );
        let second = key_value(&kvs[1]).unwrap();
        assert_eq!(
            (second.value.len(), second.lease),
            (0, 0),
            "zero fields are left out"
        );
        let gone: Value = serde_json::from_str(r#"{"result":{"header":{},"ID":"5"}}"#).unwrap();
        assert_eq!(
            int(&gone["result"], "TTL").unwrap(),
            0,
            "a keepalive of a lease etcd lost"
        );
        let bad: Value = serde_json::from_str(r#"{"TTL":"x"}"#).unwrap();
        assert!(int(&bad, "TTL").unwrap_err().contains("not a number"));
        assert!(revision(&json!({})).unwrap_err().contains("no header"));
    }

    #[test]
    fn watch_lines_say_when_the_watch_opened_and_what_changed() {
        let line = |text: &str| -> Value {
            let message: Value = serde_json::from_str(text).unwrap();
            message["result"].clone()
        };
        let created = line(r#"{"result":{"header":{"revision":"9"},"created":true}}"#);
        assert_eq!(
            watch_message(&created).unwrap(),
            Some(WatchMessage::Started { revision: 9 })
        );
        // etcd's JSON leaves out the type of a put (its enum's zero).
        let changes = line(
            r#"{"result":{"header":{"revision":"12"},"events":[
                {"kv":{"key":"L2E=","create_revision":"10","mod_revision":"11","value":"eA=="}},
                {"type":"DELETE","kv":{"key":"L2I=","mod_revision":"12"}}]}}"#,
        );
        let Some(WatchMessage::Changes { revision, changes }) = watch_message(&changes).unwrap()
        else {
            panic!("changes");
        };
        assert_eq!(revision, 12, "the last change's, not the header's");
        assert_eq!(
            changes,
            vec![
                WatchChange::Put(KeyValue {
                    key: "/a".into(),
                    value: b"x".to_vec(),
                    create_revision: 10,
                    mod_revision: 11,
                    lease: 0,
                }),
                WatchChange::Delete {
                    key: "/b".into(),
                    revision: 12
                },
            ]
        );
        let progress = line(r#"{"result":{"header":{"revision":"13"}}}"#);
        assert_eq!(watch_message(&progress).unwrap(), None);
        let cancelled = line(r#"{"result":{"canceled":true,"cancel_reason":"compacted"}}"#);
        assert!(watch_message(&cancelled).unwrap_err().contains("compacted"));
        let odd = line(r#"{"result":{"events":[{"type":"MOVE","kv":{"key":"L2E="}}]}}"#);
        assert!(watch_message(&odd).unwrap_err().contains("MOVE"));
    }
}
