//! The HTTP/1.1 of the `/metrics` endpoint: parse a request head (`httparse`), decide the
//! answer, write it. Every request gets one answer and the connection closes.
//!
//! Pure functions over bytes: the housekeeping thread's socket loop feeds them. What they
//! refuse, they refuse with a status and a sentence that says what was wrong: 400 for a
//! malformed request, 404 for an unknown path, 405 for a method other than GET or HEAD, 408
//! for a client too slow to send its request, 431 for a head over
//! `METRICS_REQUEST_BYTES_MAX` bytes or `METRICS_REQUEST_HEADERS_MAX` headers, 503 when
//! `METRICS_CONNECTIONS_MAX` scrapes are already being served.

use crate::constants::{
    METRICS_CONNECTION_MS_MAX, METRICS_CONNECTIONS_MAX, METRICS_REQUEST_BYTES_MAX,
    METRICS_REQUEST_HEADERS_MAX,
};

/// One answer, ready to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// A HEAD request: the headers say how long the body is, but it is not sent.
    pub head_only: bool,
}

impl Response {
    fn text(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into_bytes(),
            head_only: false,
        }
    }

    /// The status line, headers and body, as they go on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len(),
            if self.status == 405 { "Allow: GET, HEAD\r\n" } else { "" },
        )
        .into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }

    /// 408: the client did not send a whole request in time.
    pub fn too_slow() -> Response {
        Response::text(
            408,
            format!(
                "the request did not arrive within {METRICS_CONNECTION_MS_MAX} ms; send it whole, then read the answer\n"
            ),
        )
    }

    /// 503: every connection slot is taken.
    pub fn too_many_connections() -> Response {
        Response::text(
            503,
            format!(
                "{METRICS_CONNECTIONS_MAX} scrapes are being served already; retry in a second\n"
            ),
        )
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// What the endpoint serves.
pub trait Pages {
    /// The Prometheus text of `/metrics`.
    fn metrics(&mut self) -> &str;
}

/// What the bytes received so far on a connection call for.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The head is not complete yet: read more.
    NeedMore,
    /// Answer this and close.
    Answer(Response),
}

/// Parses the request head in `received` and decides the answer.
pub fn respond(received: &[u8], pages: &mut impl Pages) -> Progress {
    let mut headers = [httparse::EMPTY_HEADER; METRICS_REQUEST_HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(received) {
        Ok(httparse::Status::Partial) if received.len() >= METRICS_REQUEST_BYTES_MAX => {
            Progress::Answer(Response::text(
                431,
                format!(
                    "the request head is over {METRICS_REQUEST_BYTES_MAX} bytes; send a plain GET /metrics\n"
                ),
            ))
        }
        Ok(httparse::Status::Partial) => Progress::NeedMore,
        Err(httparse::Error::TooManyHeaders) => Progress::Answer(Response::text(
            431,
            format!(
                "the request has more than {METRICS_REQUEST_HEADERS_MAX} headers; send a plain GET /metrics\n"
            ),
        )),
        Err(error) => Progress::Answer(Response::text(
            400,
            format!("malformed HTTP request ({error}); send GET /metrics HTTP/1.1\n"),
        )),
        Ok(httparse::Status::Complete(_)) => {
            let method = request.method.unwrap_or_default();
            let path = request.path.unwrap_or_default();
            Progress::Answer(route(method, path, pages))
        }
    }
}

fn route(method: &str, path: &str, pages: &mut impl Pages) -> Response {
    if method != "GET" && method != "HEAD" {
        return Response::text(
            405,
            format!("{method} is not served here; use GET /metrics\n"),
        );
    }
    // A query string (`/metrics?x=y`) names the same page.
    let page = path.split('?').next().unwrap_or(path);
    let mut response = match page {
        "/metrics" => Response {
            status: 200,
            content_type: crate::metrics::exposition::CONTENT_TYPE,
            body: pages.metrics().as_bytes().to_vec(),
            head_only: false,
        },
        "/" => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: INDEX.as_bytes().to_vec(),
            head_only: false,
        },
        _ => Response::text(
            404,
            format!("{page} is not a page here; the metrics are at /metrics\n"),
        ),
    };
    response.head_only = method == "HEAD";
    response
}

const INDEX: &str = "<!doctype html><title>trove node</title>\
<h1>trove node</h1><p><a href=\"/metrics\">/metrics</a>: Prometheus text format.</p>\n";

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Pages for Fixed {
        fn metrics(&mut self) -> &str {
            "trove_up 1\n"
        }
    }

    fn answer(request: &[u8]) -> Response {
        match respond(request, &mut Fixed) {
            Progress::Answer(response) => response,
            Progress::NeedMore => panic!("wanted an answer to {request:?}"),
        }
    }

    #[test]
    fn get_metrics_answers_the_exposition() {
        let response = answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"trove_up 1\n");
        let wire = String::from_utf8(response.to_bytes()).unwrap();
        assert!(wire.starts_with("HTTP/1.1 200 OK\r\n"), "{wire}");
        assert!(wire.contains("Content-Length: 11\r\n"), "{wire}");
        assert!(wire.ends_with("\r\n\r\ntrove_up 1\n"), "{wire}");
    }

    #[test]
    fn head_sends_headers_only() {
        let response = answer(b"HEAD /metrics HTTP/1.1\r\n\r\n");
        let wire = String::from_utf8(response.to_bytes()).unwrap();
        assert!(
            wire.contains("Content-Length: 11\r\n") && wire.ends_with("\r\n\r\n"),
            "{wire}"
        );
    }

    #[test]
    fn an_incomplete_head_asks_for_more_until_it_is_too_large() {
        assert_eq!(
            respond(b"GET /metrics HTTP/1.1\r\nHost:", &mut Fixed),
            Progress::NeedMore
        );
        let mut long = b"GET /metrics HTTP/1.1\r\nX-Long: ".to_vec();
        long.resize(METRICS_REQUEST_BYTES_MAX, b'a');
        assert_eq!(answer(&long).status, 431);
    }

    #[test]
    fn bad_requests_get_a_4xx_that_says_why() {
        let cases: [(&[u8], u16, &str); 4] = [
            (b"\x00\x01garbage\r\n\r\n", 400, "malformed"),
            (b"POST /metrics HTTP/1.1\r\n\r\n", 405, "use GET"),
            (b"GET /secrets HTTP/1.1\r\n\r\n", 404, "/metrics"),
            (b"GET /metrics?name=x HTTP/1.1\r\n\r\n", 200, "trove_up"),
        ];
        for (request, status, says) in cases {
            let response = answer(request);
            assert_eq!(response.status, status, "{request:?}");
            assert!(
                String::from_utf8_lossy(&response.body).contains(says),
                "{response:?}"
            );
        }
        let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for header in 0..=METRICS_REQUEST_HEADERS_MAX {
            many.extend_from_slice(format!("X-{header}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(answer(&many).status, 431);
    }
}
