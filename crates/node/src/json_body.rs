//! A request body that must be one JSON object. axum's `Json<T>` takes a JSON array for a
//! struct too (serde reads a struct from a sequence of its fields in order), so
//! `["alice","pw"]` signed in like `{"user":"alice","password":"pw"}`: a body that is not an
//! object is refused here, naming what it is, after axum's own checks (content type, syntax,
//! fields).

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Json, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

#[derive(Debug)]
pub(crate) struct Object<T>(pub(crate) T);

#[derive(Debug)]
pub(crate) enum BodyRejection {
    Json(JsonRejection),
    /// Valid JSON of another kind: named.
    NotObject(&'static str),
}

impl BodyRejection {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            BodyRejection::Json(e) => e.status(),
            BodyRejection::NotObject(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    pub(crate) fn body_text(&self) -> String {
        match self {
            BodyRejection::Json(e) => e.body_text(),
            BodyRejection::NotObject(kind) => {
                format!("the request body must be a JSON object ({{...}}), not {kind}")
            }
        }
    }
}

impl axum::response::IntoResponse for BodyRejection {
    fn into_response(self) -> axum::response::Response {
        crate::error::ApiError::json(self).into_response()
    }
}

fn kind_of(bytes: &[u8]) -> Option<&'static str> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace())? {
        b'{' => None,
        b'[' => Some("an array"),
        b'"' => Some("a string"),
        b't' | b'f' => Some("a boolean"),
        b'n' => Some("null"),
        _ => Some("a number"),
    }
}

/// Whether the request says its body is JSON (`application/json`, or `application/…+json`), as
/// axum's `Json` asks.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Object<T> {
    type Rejection = BodyRejection;

    /// axum's checks, in its order (content type, body, syntax, fields), then the object's —
    /// without handing the request to `Json` (which took a copy of its head for each request).
    async fn from_request(req: Request, state: &S) -> Result<Self, BodyRejection> {
        if !json_content_type(req.headers()) {
            return Err(BodyRejection::Json(
                axum::extract::rejection::MissingJsonContentType::default().into(),
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| BodyRejection::Json(e.into()))?;
        let kind = kind_of(&bytes);
        let Json(value) = Json::<T>::from_bytes(&bytes).map_err(BodyRejection::Json)?;
        match kind {
            None => Ok(Object(value)),
            Some(kind) => Err(BodyRejection::NotObject(kind)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Login {
        user: String,
        password: String,
    }

    async fn read(content_type: Option<&str>, body: &str) -> Result<Object<Login>, BodyRejection> {
        let mut req = Request::builder().method("POST").uri("/");
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        Object::<Login>::from_request(
            req.body(axum::body::Body::from(body.to_string())).unwrap(),
            &(),
        )
        .await
    }

    #[tokio::test]
    async fn only_an_object_is_taken_with_axums_own_refusals_first() {
        let json = Some("application/json");
        assert!(read(json, r#" {"user":"a","password":"b"}"#).await.is_ok());
        let array = read(json, r#"["a","b"]"#).await.unwrap_err();
        assert_eq!(array.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            array.body_text().contains("not an array"),
            "{}",
            array.body_text()
        );
        // axum's checks come first: content type, then syntax, then the fields.
        assert_eq!(
            read(None, r#"["a","b"]"#).await.unwrap_err().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            read(json, r#"["a","#).await.unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        for t in [
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/problem+json",
        ] {
            assert!(
                read(Some(t), r#"{"user":"a","password":"b"}"#)
                    .await
                    .is_ok(),
                "{t}"
            );
        }
        for t in [
            "text/plain",
            "application/jsonx",
            "json",
            "application/+json",
        ] {
            assert_eq!(
                read(Some(t), r#"{"user":"a","password":"b"}"#)
                    .await
                    .unwrap_err()
                    .status(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{t}"
            );
        }
        let missing = read(json, r#"{"user":"a"}"#).await.unwrap_err();
        assert!(
            missing.body_text().contains("password"),
            "{}",
            missing.body_text()
        );
    }
}
