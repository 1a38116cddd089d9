//! Every way a POSTed body can be malformed gets a JSON-RPC error of its kind, and none panics.

use super::*;

fn refused(body: &str) -> Rejection {
    match check_body(body.as_bytes()) {
        Ok(envelope) => panic!("accepted {body:?} as {envelope:?}"),
        Err(rejection) => rejection,
    }
}

fn call(params: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#)
}

#[test]
fn well_formed_messages_of_every_shape_pass() {
    for (body, shape) in [
        (call(r#"{"name":"t","arguments":{"a":[1,2.5,-3e10,"\ud83d\ude00",null,true]}}"#), Shape::Request),
        (r#"{"jsonrpc":"2.0","id":"x","method":"initialize","params":{}}"#.into(), Shape::Request),
        (r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.into(), Shape::Notification),
        (r#"{"jsonrpc":"2.0","id":0,"result":{}}"#.into(), Shape::Response),
        (r#"{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"m"}}"#.into(), Shape::Error),
        (format!(" \n{}\t", call("{}")), Shape::Request),
    ] {
        let envelope = check_body(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"));
        assert_eq!(envelope.shape, shape, "{body}");
    }
    assert!(check_body(call("{}").as_bytes()).unwrap().is_method("tools/call"));
    // 127 levels inside the message (128 with it): the most serde_json, and so rmcp, reads.
    let deep = call(&format!("{{\"a\":{}1{}}}", "[".repeat(125), "]".repeat(125)));
    assert!(check_body(deep.as_bytes()).is_ok());
}

#[test]
fn malformed_json_anywhere_is_a_parse_error() {
    let deep = |levels: usize| call(&format!("{{\"arguments\":{{\"a\":{}1{}}}}}", "[".repeat(levels), "]".repeat(levels)));
    let cases = [
        // Each of these used to pass the edge's check and reach rmcp, which answered 415 text/plain.
        (deep(200), "recursion limit"),
        (deep(100_000), "recursion limit"),
        (call(r#"{"name":"t","arguments":{"n":1e400}}"#), "number out of range"),
        (call(r#"{"name":"t","arguments":{"n":-1e309}}"#), "number out of range"),
        (call(r#"{"name":"t","arguments":{"s":"\ud800"}}"#), "hex escape"),
        (call(r#"{"name":"t","arguments":{"s":"a\ud800b"}}"#), "hex escape"),
        (call(r#"{"name":"t","arguments":{"s":"\udc00"}}"#), "surrogate"),
        (call(r#"{"name":"t","arguments":{"\ud800":1}}"#), "hex escape"),
        (r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","extra":"\udbff"}"#.into(), "hex escape"),
        (r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1e999]}"#.into(), "number out of range"),
        // Syntax errors, truncations and trailing bytes.
        (call(r#"{"name":"t","arguments":{"s":"\x"}}"#), "escape"),
        (call(r#"{"name":"t","arguments":{"s":"tab	here"}}"#), "control character"),
        (call("{\"name\":\"t\",}"), "trailing comma"),
        (call("{\"name\":01}"), "invalid number"),
        (format!("{} {{}}", call("{}")), "trailing characters"),
        ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":".into(), "EOF"),
        ("".into(), "EOF"),
        ("   ".into(), "EOF"),
        ("\u{feff}{\"jsonrpc\":\"2.0\",\"method\":\"x\"}".into(), "expected value"),
        ("nul".into(), "EOF"),
        ("nulx".into(), "expected ident"),
        ("[1,".into(), "EOF"),
        (format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)), "recursion limit"),
    ];
    for (body, why) in cases {
        let (status, code, message) = refused(&body);
        let shown: String = body.chars().take(80).collect();
        assert_eq!((status, code), (StatusCode::BAD_REQUEST, PARSE_ERROR), "{shown}: {message}");
        assert!(message.starts_with("Parse error: ") && message.contains(why), "{shown}: {message} (wanted {why})");
    }
}

#[test]
fn well_formed_json_that_is_no_message_is_an_invalid_request() {
    let cases = [
        ("[]", "batch"),
        (r#"[{"jsonrpc":"2.0","method":"x"}]"#, "batch"),
        ("5", "one JSON-RPC object"),
        ("\"text\"", "one JSON-RPC object"),
        ("null", "one JSON-RPC object"),
        (r#"{"hello":"world"}"#, "jsonrpc"),
        (r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#, "jsonrpc"),
        (r#"{"jsonrpc":2,"id":1,"method":"x"}"#, "jsonrpc"),
        (r#"{"jsonrpc":"2.0","id":1}"#, "a method, a result or an error"),
        (r#"{"jsonrpc":"2.0","id":1,"method":"x","result":{}}"#, "either a method"),
        (r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#, "either a method"),
        (r#"{"jsonrpc":"2.0","id":1,"method":7}"#, "method must be a string"),
        (r#"{"jsonrpc":"2.0","id":1,"method":""}"#, "method is empty"),
        (r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#, "id must be a string or an integer"),
        (r#"{"jsonrpc":"2.0","id":18446744073709551615,"method":"x"}"#, "id must be a string or an integer"),
        (r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#, "id must be a string or an integer"),
        (r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#, "not null"),
        (r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"x"}"#, "`id` appears twice"),
        (r#"{"jsonrpc":"2.0","jsonrpc":"2.0","method":"x"}"#, "`jsonrpc` appears twice"),
        (r#"{"jsonrpc":"2.0","method":"x","method":"y"}"#, "`method` appears twice"),
        (r#"{"jsonrpc":"2.0","id":1,"error":5}"#, "an error must be an object"),
        (r#"{"jsonrpc":"2.0","id":1,"error":{"code":"x","message":"m"}}"#, "an error must be an object"),
        (r#"{"jsonrpc":"2.0","id":1,"error":{"code":4294967296,"message":"m"}}"#, "an error must be an object"),
        (r#"{"jsonrpc":"2.0","result":{}}"#, "needs the id of the request"),
    ];
    for (body, why) in cases {
        let (status, code, message) = refused(body);
        assert_eq!((status, code), (StatusCode::BAD_REQUEST, INVALID_REQUEST), "{body}: {message}");
        assert!(message.starts_with("Invalid Request: ") && message.contains(why), "{body}: {message} (wanted {why})");
    }
    for (body, why) in [
        (call("5"), "params must be an object"),
        (call("[1]"), "params must be an object"),
        (call("null"), "params must be an object"),
        (r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":"x"}"#.into(), "params must be an object"),
        (call(r#"{"name":"t","_meta":5}"#), "_meta must be an object"),
        (r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":[]}}"#.into(), "_meta must be an object"),
    ] {
        let (status, code, message) = refused(&body);
        assert_eq!((status, code), (StatusCode::BAD_REQUEST, INVALID_PARAMS), "{body}: {message}");
        assert!(message.starts_with("Invalid params: ") && message.contains(why), "{message}");
    }
    let (_, code, message) = check_body(&[b'{', 0xff, b'}']).unwrap_err();
    assert_eq!(code, PARSE_ERROR);
    assert!(message.contains("not valid UTF-8 (byte 1)"), "{message}");
}

/// Whatever the edge accepts is valid JSON and a message rmcp's types read: no malformation gets past
/// the check to become rmcp's refusal. Bodies are mutated from valid ones (a small deterministic fuzz).
#[test]
fn mutated_bodies_never_panic_and_nothing_malformed_gets_through() {
    let seeds = [
        call(r#"{"name":"t","arguments":{"a":[1,{"b":"\u00e9\ud83d\ude00"}],"n":-1.5e3}}"#),
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":"e","error":{"code":-32000,"message":"no"}}"#.to_owned(),
    ];
    let pieces: [&[u8]; 14] =
        [b"\\ud800", b"1e400", b"[[[[", b"]]", b"\"", b"\\", b"{", b"}", b",", b":", b"\x00", b"\xff", b"null", b"\"id\":1,"];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..20_000 {
        let mut body = seeds[round % seeds.len()].clone().into_bytes();
        for _ in 0..=next() % 3 {
            let at = (next() as usize) % (body.len() + 1);
            match next() % 3 {
                0 => body.truncate(at),
                1 => {
                    let piece = pieces[(next() as usize) % pieces.len()];
                    body.splice(at..at, piece.iter().copied());
                }
                _ => {
                    if at < body.len() {
                        body[at] ^= 1 << (next() % 8);
                    }
                }
            }
        }
        if let Ok(envelope) = check_body(&body) {
            assert!(serde_json::from_slice::<Value>(&body).is_ok(), "accepted invalid JSON: {}", String::from_utf8_lossy(&body));
            let rmcp = unreadable(&body, envelope.shape);
            assert!(rmcp.is_none(), "rmcp cannot read {}: {rmcp:?}", String::from_utf8_lossy(&body));
        }
    }
}

fn text_response(status: StatusCode, text: &'static str) -> Response<BoxBody<Bytes, Infallible>> {
    let body = http_body_util::Full::new(Bytes::from(text)).boxed();
    Response::builder().status(status).header("allow", "GET, POST, DELETE").body(body).unwrap()
}

async fn json_of(response: Response) -> (StatusCode, http::HeaderMap, Value) {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, serde_json::from_slice(&bytes).expect("a JSON body"))
}

#[tokio::test]
async fn rmcp_text_refusals_become_json_rpc_errors_with_the_same_status_and_headers() {
    let (status, headers, body) = json_of(json_errors(text_response(StatusCode::NOT_FOUND, "Not Found: Session not found"), None).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(headers["allow"], "GET, POST, DELETE", "other headers are kept");
    assert_eq!(body, json!({"jsonrpc": "2.0", "id": null, "error": {"code": INVALID_REQUEST, "message": "Not Found: Session not found"}}));
    let (status, _, body) = json_of(json_errors(text_response(StatusCode::INTERNAL_SERVER_ERROR, "boom"), None).await).await;
    assert_eq!((status, body["error"]["code"].as_i64()), (StatusCode::INTERNAL_SERVER_ERROR, Some(INTERNAL_ERROR)));
}

#[tokio::test]
async fn a_message_rmcp_cannot_read_is_a_400_naming_the_field_and_a_content_type_415_stays() {
    // Nothing check_body accepts is known to fail rmcp's types; these two (which check_body refuses)
    // stand for whatever a later rmcp may refuse that check_body does not know.
    let cases = [
        (r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":[]}}"#, Shape::Request, INVALID_PARAMS, "Invalid params: "),
        (r#"{"jsonrpc":"2.0","result":{}}"#, Shape::Response, INVALID_REQUEST, "Invalid Request: missing field `id`"),
    ];
    for (body, shape, code, message) in cases {
        let body = Bytes::from(body);
        let response = json_errors(text_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, "fail to deserialize request body"), Some((&body, shape))).await;
        let (status, _, answer) = json_of(response).await;
        assert_eq!((status, answer["error"]["code"].as_i64()), (StatusCode::BAD_REQUEST, Some(code)), "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap().starts_with(message), "{answer}");
    }

    // A readable body: rmcp's 415 was about the content type, and stays a 415 (in JSON).
    let readable = Bytes::from(call(r#"{"name":"t"}"#));
    let response = json_errors(text_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type: Content-Type must be application/json"), Some((&readable, Shape::Request))).await;
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(body["error"]["message"].as_str().unwrap().contains("Content-Type"), "{body}");
}


