//! SQLite's own log reaches the callback given before any database opens (a process of its
//! own: SQLite takes the callback only before it initializes).

use std::sync::Mutex;

static LOGGED: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());

fn keep(code: i32, message: &str) {
    LOGGED.lock().unwrap().push((code, message.to_string()));
}

#[test]
fn an_io_failure_is_logged_with_its_file_and_errno() {
    tandem_store::log_sqlite_to(keep).unwrap();
    assert!(
        tandem_store::log_sqlite_to(keep).is_err(),
        "handed out twice"
    );
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("no such directory").join("x.db");
    let err = tandem_store::rusqlite::Connection::open(&missing).unwrap_err();
    assert!(err.to_string().contains("unable to open"), "{err}");
    let logged = LOGGED.lock().unwrap();
    assert!(
        logged.iter().any(|(code, message)| {
            tandem_store::sqlite_log_is_failure(*code) && message.contains("no such directory")
        }),
        "{logged:?}"
    );
}
