//! `metav1.Status` failure objects, the body of every error response and of
//! watch ERROR events.

use serde_json::{Value, json};

/// A `Status` with `status: Failure`, as the real API server writes it.
pub(crate) fn failure(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}
