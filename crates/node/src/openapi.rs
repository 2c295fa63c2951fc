//! `/openapi.json`: the users' API (sign-in and chat), OpenAPI 3.1. Integration tests call
//! every operation listed here on a live node, so the document cannot drift from the routes.

use axum::Json;
use serde_json::{Value, json};

fn error_responses(codes: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for c in codes {
        let what = match *c {
            "400" => "bad input: malformed JSON, wrong types, invalid names, text too long",
            "401" => "no valid bearer token",
            "403" => "not allowed: not a member, not a manager",
            "404" => "no such room, category or member (secret rooms are not found by non-members)",
            "409" => "already exists, or the change would leave the room without a manager",
            "413" => "request body over 1 MiB",
            "415" => "a body without `content-type: application/json`",
            "422" => {
                "a JSON body of the wrong shape: not an object, a field unknown, missing or of the wrong type"
            }
            "429" => {
                "too many failed sign-ins from this address, for this name or for any: wait the Retry-After seconds"
            }
            "503" => "this node is not an active chat server, or the chat database is unreachable",
            _ => "error",
        };
        m.insert(c.to_string(), json!({ "description": what, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }));
    }
    Value::Object(m)
}

fn op(summary: &str, ok: (&str, &str, Value), errors: &[&str], extra: Value) -> Value {
    // Every route that reads a JSON body answers what a body can be refused with.
    let mut errors = errors.to_vec();
    if extra.get("requestBody").is_some() {
        for code in ["400", "413", "415", "422"] {
            if !errors.contains(&code) {
                errors.push(code);
            }
        }
    }
    let mut responses = error_responses(&errors);
    let body = if ok.2.is_null() {
        json!({ "description": ok.1 })
    } else {
        json!({ "description": ok.1, "content": { "application/json": { "schema": ok.2 } } })
    };
    responses[ok.0] = body;
    let mut o =
        json!({ "summary": summary, "responses": responses, "security": [{ "bearer": [] }] });
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            o[k] = v;
        }
    }
    o
}

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn array(name: &str) -> Value {
    json!({ "type": "array", "items": schema(name) })
}

fn body(name: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema(name) } } })
}

fn room_param() -> Value {
    json!({ "name": "room", "in": "path", "required": true, "schema": { "type": "string" } })
}

fn user_param() -> Value {
    json!({ "name": "user", "in": "path", "required": true, "schema": { "type": "string" } })
}

/// The document.
pub fn document_value() -> Value {
    let std_errors = ["400", "401", "403", "404", "503"];
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tandem",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Persistent group chat. Sign in at POST /api/v1/login for a bearer token, then use it as `Authorization: Bearer TOKEN`. Every error is JSON: {\"error\": {\"code\", \"message\"}}. Live events: a WebSocket at GET /api/v1/events?rooms=a,b&after=ID (token as header or ?token=) sends {\"type\":\"event\",\"event\":Event} in id order, a {\"type\":\"ready\"} once the backlog after ID is sent, then live events; reconnect with after=<last id seen> to resume without gaps or duplicates. The server pings the session (every 30 s by default) and ends it after three pings unanswered, or once the client has read nothing for as long; a client message over 16 KiB ends it too."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "object", "required": ["code", "message"], "properties": { "code": { "type": "string" }, "message": { "type": "string" } } } } },
                "Login": { "type": "object", "required": ["user", "password"], "additionalProperties": false, "properties": { "user": { "type": "string" }, "password": { "type": "string" } } },
                "Token": { "type": "object", "properties": { "user": { "type": "string" }, "pool": { "type": "string" }, "token": { "type": "string" } } },
                "Me": { "type": "object", "properties": { "user": { "type": "string" }, "pool": { "type": "string" } } },
                "Privacy": { "type": "string", "enum": ["open", "closed", "secret"], "description": "open: anyone reads and may join; closed: listed to all, members read and post; secret: invisible to non-members" },
                "Category": { "type": "object", "properties": { "name": { "type": "string" }, "description": { "type": "string" }, "created_by": { "type": "string" }, "created_ms": { "type": "integer" } } },
                "NewCategory": { "type": "object", "required": ["name"], "additionalProperties": false, "properties": { "name": { "type": "string", "maxLength": 64 }, "description": { "type": "string", "description": "at most 1024 bytes of UTF-8" } } },
                "Room": { "type": "object", "properties": { "name": { "type": "string" }, "category": { "type": ["string", "null"] }, "description": { "type": "string" }, "privacy": schema("Privacy"), "created_by": { "type": "string" }, "created_ms": { "type": "integer" }, "members": { "type": "integer" }, "member": { "type": "boolean" }, "manager": { "type": "boolean" } } },
                "NewRoom": { "type": "object", "required": ["name", "privacy"], "additionalProperties": false, "properties": { "name": { "type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$" }, "category": { "type": ["string", "null"], "description": "an existing category; null or absent: none" }, "description": { "type": ["string", "null"], "description": "at most 1024 bytes of UTF-8; null or absent: empty" }, "privacy": schema("Privacy") } },
                "RoomUpdate": { "type": "object", "additionalProperties": false, "description": "Each field given changes the room; a field absent or null leaves it as it is; at least one must change", "properties": { "description": { "type": ["string", "null"], "description": "at most 1024 bytes of UTF-8; \"\" empties it" }, "privacy": schema("Privacy"), "category": { "type": ["string", "null"], "description": "an existing category; \"\" takes the room out of its category" } } },
                "Member": { "type": "object", "properties": { "user": { "type": "string" }, "manager": { "type": "boolean" }, "joined_ms": { "type": "integer" } } },
                "MemberChange": { "type": "object", "required": ["manager"], "additionalProperties": false, "properties": { "manager": { "type": "boolean", "description": "true: the member manages the room; false: a member only" } } },
                "NewMember": { "type": "object", "required": ["user"], "additionalProperties": false, "properties": { "user": { "type": "string" }, "manager": { "type": "boolean" } } },
                "NewMessage": { "type": "object", "required": ["text"], "additionalProperties": false, "properties": { "text": { "type": "string", "minLength": 1, "description": "1 to 8192 bytes of UTF-8 (not characters: 8192 ASCII letters, 4096 two-byte ones); not only white space or invisible characters; no NUL" }, "reply_to": { "type": ["integer", "null"] } } },
                "Event": { "type": "object", "description": "A message or a room change; ids grow across all rooms. subject: the member added or removed (member_added, member_removed), or the member made a manager or a member only (room_updated; null when the room itself changed).", "properties": { "id": { "type": "integer" }, "room": { "type": "string" }, "kind": { "type": "string", "enum": ["message", "room_created", "room_updated", "member_added", "member_removed"] }, "sender": { "type": "string" }, "time_ms": { "type": "integer" }, "text": { "type": "string" }, "subject": { "type": ["string", "null"] }, "reply_to": { "type": ["integer", "null"] }, "lsn": { "type": "integer" } } },
                "Page": { "type": "object", "properties": { "events": array("Event"), "more": { "type": "boolean" } } },
                "ReadMark": { "type": "object", "required": ["event_id"], "additionalProperties": false, "properties": { "event_id": { "type": "integer" } } },
                "Unread": { "type": "object", "properties": { "unread": { "type": "integer", "maximum": 10000, "description": "messages after the read position, counted up to 10000: 10000 means 10000 or more" } } }
            }
        },
        "paths": {
            "/api/v1/login": { "post": {
                "summary": "Sign in with a password for a bearer token",
                "requestBody": body("Login"),
                "responses": { "200": { "description": "signed in", "content": { "application/json": { "schema": schema("Token") } } }, "400": error_responses(&["400"])["400"], "401": error_responses(&["401"])["401"], "413": error_responses(&["413"])["413"], "415": error_responses(&["415"])["415"], "422": error_responses(&["422"])["422"], "429": error_responses(&["429"])["429"], "503": { "description": "this node is checking as many sign-ins as it may at once (wait the Retry-After seconds), or the user database is unreachable", "content": { "application/json": { "schema": schema("Error") } } } }
            } },
            "/api/v1/me": { "get": op("The signed-in user", ("200", "the user", schema("Me")), &["401"], json!({})) },
            "/api/v1/categories": {
                "get": op("Every category", ("200", "categories", array("Category")), &["401", "503"], json!({})),
                "post": op("Add a category", ("201", "added", schema("Category")), &["400", "401", "409", "413", "503"], json!({ "requestBody": body("NewCategory") }))
            },
            "/api/v1/rooms": {
                "get": op("The rooms I may see", ("200", "rooms", array("Room")), &["401", "503"], json!({})),
                "post": op("Create a room (I become its manager)", ("201", "created", schema("Room")), &["400", "401", "404", "409", "413", "503"], json!({ "requestBody": body("NewRoom") }))
            },
            "/api/v1/rooms/{room}": {
                "get": op("A room", ("200", "the room", schema("Room")), &std_errors, json!({ "parameters": [room_param()] })),
                "patch": op("Edit a room (managers)", ("200", "the room", schema("Room")), &std_errors, json!({ "parameters": [room_param()], "requestBody": body("RoomUpdate") }))
            },
            "/api/v1/rooms/{room}/members": {
                "get": op("A room's members", ("200", "members", array("Member")), &std_errors, json!({ "parameters": [room_param()] })),
                "post": op("Add a member (managers; anyone may join an open room)", ("201", "added", schema("Member")), &["400", "401", "403", "404", "409", "503"], json!({ "parameters": [room_param()], "requestBody": body("NewMember") }))
            },
            "/api/v1/rooms/{room}/members/{user}": {
                "delete": op("Remove a member (managers) or leave; the last manager may not (409: make another member a manager first)", ("204", "removed", Value::Null), &["400", "401", "403", "404", "409", "503"], json!({ "parameters": [room_param(), user_param()] })),
                "patch": op("Make a member a manager, or a member only (managers). Recorded as a room_updated event whose subject is the member; a member already so is answered as it is, nothing recorded. Taking the room's last manager away is refused (409), as leaving is", ("200", "the member", schema("Member")), &["400", "401", "403", "404", "409", "413", "415", "422", "503"], json!({ "parameters": [room_param(), user_param()], "requestBody": body("MemberChange") }))
            },
            "/api/v1/rooms/{room}/messages": {
                "get": op("History, oldest first within the page", ("200", "a page of events", schema("Page")), &std_errors, json!({ "parameters": [room_param(),
                    { "name": "before", "in": "query", "schema": { "type": "integer" }, "description": "the page before this event id" },
                    { "name": "after", "in": "query", "schema": { "type": "integer" }, "description": "the page after this event id" },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 500, "default": 100 } }] })),
                "post": op("Post a message (members). With an Idempotency-Key, a retry of the same post is answered with the message the first attempt made; the key used for another post is a 409", ("201", "the message", schema("Event")), &["400", "401", "403", "404", "409", "413", "503"], json!({ "parameters": [room_param(),
                    { "name": "Idempotency-Key", "in": "header", "schema": { "type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[!-~]+$" }, "description": "the client's key for this post, unique per sender: send the same key when retrying a post that got no answer. Remembered for a day after the message; a retry after that makes a new message" }], "requestBody": body("NewMessage") }))
            },
            "/api/v1/rooms/{room}/read": {
                "post": op("Mark the room read up to an event", ("204", "marked", Value::Null), &std_errors, json!({ "parameters": [room_param()], "requestBody": body("ReadMark") }))
            },
            "/api/v1/rooms/{room}/unread": {
                "get": op("Messages after my read position", ("200", "count", schema("Unread")), &std_errors, json!({ "parameters": [room_param()] }))
            },
            "/api/v1/search": {
                "get": op("Full-text search over the messages I may read, newest first", ("200", "events", array("Event")), &["400", "401", "503"], json!({
                    "description": "Finds the messages that hold every white-space separated piece of q. There is no query syntax: quotes, AND/OR/NOT, NEAR, * and parentheses are read as text, so a quoted \"two words\" is not phrase search but two words, each required anywhere in the message. Words are letters and digits, matched whole, in any case, Latin accents ignored, after Unicode NFKC normalization of both the messages and q (ﬁle is file, fullwidth ＡＢＣ is abc); punctuation, symbols and emoji separate words and are not indexed. Chinese, Japanese and Korean characters are each a word of their own, and a piece is the phrase of its words, adjacent and in order: 北京 finds 我爱北京天安门, 東京タワー finds 東京タワーに行きました, 문장 finds 한국어 문장입니다; likewise e-mail finds e and mail adjacent. A piece that holds no letter or digit (🎉, ?, ++) is refused with a 400 naming it. Paging: pass the last (oldest) id of a page as before for the next one; a page shorter than limit is the last. A 503 catching_up while a new copy builds its index.",
                    "parameters": [
                    { "name": "q", "in": "query", "required": true, "schema": { "type": "string", "maxLength": 1024 }, "description": "the words, separated by white space; at most 1024 bytes of UTF-8" },
                    { "name": "before", "in": "query", "schema": { "type": "integer" }, "description": "only messages with an id below this one: the last id of the previous page" },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 100, "default": 20 } }] }))
            },
            "/api/v1/events": {
                "get": op("WebSocket of live room events (see the description above)", ("101", "switching to WebSocket", Value::Null), &["400", "401", "403", "404", "503"], json!({ "parameters": [
                    { "name": "rooms", "in": "query", "required": true, "schema": { "type": "string" }, "description": "comma-separated room names" },
                    { "name": "after", "in": "query", "schema": { "type": "integer" }, "description": "resume after this event id" },
                    { "name": "token", "in": "query", "schema": { "type": "string" }, "description": "the bearer token, for clients that cannot set headers" }] }))
            }
        }
    })
}

pub(crate) async fn document() -> Json<Value> {
    Json(document_value())
}
