//! The declared schema: numbered migrations (journaled like any write) and the cache of every
//! journaled table's columns and primary key, from which row operations are built.

use crate::error::{Result, StoreError};
use crate::record::{OpRef, RowKind};
use rusqlite::types::ToSql;
use rusqlite::{CachedStatement, Connection, params_from_iter};
use std::cell::RefCell;
use std::collections::HashMap;

/// One numbered schema change. Versions start at 1 and grow by one.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Prefix of the store's own tables, which are never journaled.
pub(crate) const INTERNAL_PREFIX: &str = "_tandem_";

pub(crate) struct TableInfo {
    pub(crate) columns: Vec<String>,
    pub(crate) pk: Vec<usize>,
    insert_sql: String,
    update_sql: String,
    delete_sql: String,
}

/// Every journaled table of a database, by name.
#[derive(Default)]
pub(crate) struct Tables(HashMap<String, TableInfo>);

pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl Tables {
    /// Reads every ordinary table of `main` (not SQLite's, not the store's, not virtual or shadow
    /// tables, which triggers maintain). Every one must have a declared primary key.
    pub(crate) fn load(conn: &Connection) -> Result<Tables> {
        let mut names: Vec<String> = Vec::new();
        {
            let mut stmt = conn.prepare("PRAGMA main.table_list")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let schema: String = row.get("schema")?;
                let name: String = row.get("name")?;
                let kind: String = row.get("type")?;
                if schema == "main"
                    && kind == "table"
                    && !name.starts_with("sqlite_")
                    && !name.starts_with(INTERNAL_PREFIX)
                {
                    names.push(name);
                }
            }
        }
        let mut tables = HashMap::new();
        for name in names {
            let mut columns = Vec::new();
            let mut pk: Vec<(i64, usize)> = Vec::new();
            let mut stmt = conn.prepare(&format!("PRAGMA main.table_info({})", quote(&name)))?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let col: String = row.get("name")?;
                let pk_rank: i64 = row.get("pk")?;
                if pk_rank > 0 {
                    pk.push((pk_rank, columns.len()));
                }
                columns.push(col);
            }
            if pk.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "table {name} has no primary key: every journaled table needs one so that \
                     copies address the same rows"
                )));
            }
            pk.sort();
            let pk: Vec<usize> = pk.into_iter().map(|(_, i)| i).collect();
            tables.insert(name.clone(), TableInfo::new(&name, columns, pk));
        }
        Ok(Tables(tables))
    }

    pub(crate) fn get(&self, table: &str) -> Result<&TableInfo> {
        self.0.get(table).ok_or_else(|| {
            StoreError::Invalid(format!(
                "no journaled table named {table:?} in this database"
            ))
        })
    }
}

impl TableInfo {
    fn new(name: &str, columns: Vec<String>, pk: Vec<usize>) -> TableInfo {
        let t = quote(name);
        let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
        let insert_sql = format!(
            "INSERT INTO {t} ({}) VALUES ({})",
            cols.join(", "),
            (1..=cols.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // Every column is set from the row (parameters 1..n); the key columns select the row.
        let update_sql = format!(
            "UPDATE {t} SET {} WHERE {}",
            cols.iter()
                .enumerate()
                .map(|(i, c)| format!("{c} = ?{}", i + 1))
                .collect::<Vec<_>>()
                .join(", "),
            pk.iter()
                .map(|&i| format!("{} = ?{}", cols[i], i + 1))
                .collect::<Vec<_>>()
                .join(" AND ")
        );
        let delete_sql = format!(
            "DELETE FROM {t} WHERE {}",
            pk.iter()
                .enumerate()
                .map(|(k, &i)| format!("{} = ?{}", cols[i], k + 1))
                .collect::<Vec<_>>()
                .join(" AND ")
        );
        TableInfo {
            columns,
            pk,
            insert_sql,
            update_sql,
            delete_sql,
        }
    }
}

/// The row statements of one SQLite transaction, each prepared (or taken from the
/// connection's cache) once and held until the transaction ends: a group commit of a hundred
/// inserts into one table looks its statement up once, not a hundred times.
pub(crate) struct Statements<'c> {
    conn: &'c Connection,
    /// By SQL text; a transaction uses a handful, so a list is faster than a map.
    held: RefCell<Vec<(String, CachedStatement<'c>)>>,
}

impl<'c> Statements<'c> {
    pub(crate) fn new(conn: &'c Connection) -> Statements<'c> {
        Statements {
            conn,
            held: RefCell::new(Vec::new()),
        }
    }
}

/// What a row operation needs of [`Statements`], without its lifetime: a transaction borrows
/// it for a shorter time than the statements borrow the connection.
pub(crate) trait RowStatements {
    fn conn(&self) -> &Connection;
    /// Runs `sql` with `values`; returns the rows changed.
    fn execute(&self, sql: &str, values: &mut dyn Iterator<Item = &dyn ToSql>) -> Result<usize>;
    /// Forgets every statement: the schema changed.
    fn clear(&self);
}

impl RowStatements for Statements<'_> {
    fn conn(&self) -> &Connection {
        self.conn
    }

    fn execute(&self, sql: &str, values: &mut dyn Iterator<Item = &dyn ToSql>) -> Result<usize> {
        let mut held = self.held.borrow_mut();
        let at = match held.iter().position(|(s, _)| s == sql) {
            Some(at) => at,
            None => {
                held.push((sql.to_string(), self.conn.prepare_cached(sql)?));
                held.len() - 1
            }
        };
        Ok(held[at].1.execute(params_from_iter(values))?)
    }

    fn clear(&self) {
        self.held.borrow_mut().clear();
    }
}

/// Applies an operation read in place from its record (`record::visit_ops`): a copy's replay.
/// The primary's transactions call [`apply_row`] and [`migrate`] themselves, so both produce
/// the same rows. Returns true when the operation changed the schema (the table cache must be
/// reloaded, and `stmts` is cleared).
pub(crate) fn apply_op_ref(
    stmts: &dyn RowStatements,
    tables: &Tables,
    op: &OpRef<'_, '_>,
) -> Result<bool> {
    match *op {
        OpRef::Row {
            kind,
            table,
            values,
        } => apply_row(stmts, tables, kind, table, values).map(|()| false),
        OpRef::Migrate { version, name, sql } => migrate(stmts, version, name, sql),
    }
}

/// Applies one row operation.
pub(crate) fn apply_row<V: ToSql>(
    stmts: &dyn RowStatements,
    tables: &Tables,
    kind: RowKind,
    table: &str,
    values: &[V],
) -> Result<()> {
    let info = tables.get(table)?;
    let mut bound = values.iter().map(|v| v as &dyn ToSql);
    match kind {
        RowKind::Insert => {
            check_len(table, "row", values.len(), info.columns.len())?;
            stmts.execute(&info.insert_sql, &mut bound)?;
        }
        RowKind::Update => {
            check_len(table, "row", values.len(), info.columns.len())?;
            let n = stmts.execute(&info.update_sql, &mut bound)?;
            if n != 1 {
                let key = shown(info.pk.iter().map(|&i| &values[i]));
                return Err(StoreError::Invalid(format!(
                    "update of {table}: no row with key {key}"
                )));
            }
        }
        RowKind::Delete => {
            check_len(table, "key", values.len(), info.pk.len())?;
            let n = stmts.execute(&info.delete_sql, &mut bound)?;
            if n != 1 {
                return Err(StoreError::Invalid(format!(
                    "delete from {table}: no row with key {}",
                    shown(values.iter())
                )));
            }
        }
    }
    Ok(())
}

/// Values as an error names them: `[Integer(7), Text("general")]`, owned or read in place.
fn shown<'v, V: ToSql + 'v>(values: impl Iterator<Item = &'v V>) -> String {
    let values: Vec<rusqlite::types::Value> = values
        .map(|v| match v.to_sql() {
            Ok(rusqlite::types::ToSqlOutput::Borrowed(r)) => crate::record::owned(r),
            Ok(rusqlite::types::ToSqlOutput::Owned(v)) => v,
            _ => rusqlite::types::Value::Null,
        })
        .collect();
    format!("{values:?}")
}

pub(crate) fn migrate(
    stmts: &dyn RowStatements,
    version: u32,
    name: &str,
    sql: &str,
) -> Result<bool> {
    stmts.clear();
    let conn = stmts.conn();
    conn.execute_batch(sql)
        .map_err(|e| StoreError::Invalid(format!("migration {version} ({name}) failed: {e}")))?;
    conn.execute(
        "INSERT INTO _tandem_migrations (version, name, sql) VALUES (?1, ?2, ?3)",
        rusqlite::params![version, name, sql],
    )?;
    Ok(true)
}

fn check_len(table: &str, what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(StoreError::Invalid(format!(
            "{table}: {what} has {got} values, the table needs {want}"
        )));
    }
    Ok(())
}

/// Checks a list of migrations against what a database already applied. Returns the ones to
/// apply, in order, or an error naming the first mismatch.
pub(crate) fn pending_migrations(
    applied: &[(u32, String)],
    wanted: &[Migration],
) -> Result<Vec<Migration>> {
    for (i, m) in wanted.iter().enumerate() {
        if m.version as usize != i + 1 {
            return Err(StoreError::Invalid(format!(
                "migration {:?} has version {}, expected {} (versions are 1, 2, 3, …)",
                m.name,
                m.version,
                i + 1
            )));
        }
    }
    for (version, sql) in applied {
        match wanted.get(*version as usize - 1) {
            Some(m) if m.sql == sql => {}
            Some(m) => {
                return Err(StoreError::Invalid(format!(
                    "migration {version} ({}) differs from the one this database applied",
                    m.name
                )));
            }
            None => {
                return Err(StoreError::Invalid(format!(
                    "this database has migration {version}, newer than this program knows ({}): \
                     run a newer tandem",
                    wanted.len()
                )));
            }
        }
    }
    Ok(wanted[applied.len()..].to_vec())
}
