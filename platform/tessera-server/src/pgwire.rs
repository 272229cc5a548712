//! The PostgreSQL wire protocol (pgwire, through datafusion-postgres), for
//! psql, BI tools and drivers: `psql -h 127.0.0.1 -p 5433 -U <principal>`
//! with the principal's token as the password.
//!
//! Each connection gets its own session, built for the principal that
//! authenticated: the same catalogs, masking, limits and audit as
//! `POST /api/v1/sql` ([`tessera_query`]). Statements are checked by the
//! same sandbox before they are planned; the protocol's own chatter (`SET`
//! of client settings, `SHOW`, `BEGIN`/`COMMIT`) is answered without
//! touching the engine, and `pg_catalog` (for `\dt`, `\d`) describes only
//! what the session may read.

use std::collections::HashMap;
use std::fmt::Debug;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::{HookClient, QueryHook};
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, Parser};
use futures::{Sink, SinkExt as _, Stream};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, METADATA_USER, PgWireConnectionState, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;
use tessera_query::sandbox::{self, Refusal};
use tessera_query::{Audit, ErrorKind, QueryError, Session};
use tessera_store::Principal;

use crate::state::AppState;

type DfStmt = (String, Option<(Statement, LogicalPlan)>);

/// Serves the protocol on `listener` until `stop` turns true.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL protocol: accept failed");
                continue;
            }
        };
        // Replies are several writes: send each at once (see `crate::serve`).
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "cannot set TCP_NODELAY on a PostgreSQL connection");
        }
        let conn = Arc::new(Conn { state: state.clone(), session: OnceLock::new(), last_tables: Arc::default() });
        let handlers = Handlers { startup: Arc::new(TokenStartup { conn: Arc::clone(&conn) }), query: Arc::new(Queries::new(conn)) };
        tokio::spawn(async move {
            if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                tracing::debug!(error = %e, %peer, "PostgreSQL connection ended");
            }
        });
    }
}

/// One connection: who it is, once authenticated.
struct Conn {
    state: AppState,
    session: OnceLock<Connected>,
    /// The tables the last simple-protocol statement read (for its audit record).
    last_tables: Arc<Mutex<Vec<String>>>,
}

struct Connected {
    session: Session,
    service: Arc<DfSessionService>,
}

impl Conn {
    fn connected(&self) -> PgWireResult<&Connected> {
        self.session.get().ok_or(PgWireError::NotReadyForQuery)
    }
}

struct Handlers {
    startup: Arc<TokenStartup>,
    query: Arc<Queries>,
}

impl PgWireServerHandlers for Handlers {
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }

    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.query)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.query)
    }
}

fn error(severity: &str, code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(severity.to_owned(), code.to_owned(), message.into())))
}

/// The SQLSTATE of a query error.
fn sqlstate(e: &QueryError) -> &'static str {
    match e.kind {
        ErrorKind::Syntax => "42601",
        ErrorKind::ReadOnly => "25006",
        ErrorKind::Invalid => "42P01",
        ErrorKind::Memory => "53200",
        ErrorKind::Timeout => "57014",
        ErrorKind::Execution => "22000",
        ErrorKind::TooComplex => "54001",
        ErrorKind::Busy => "53300",
        ErrorKind::Internal => "XX000",
    }
}

fn query_error(e: &QueryError) -> PgWireError {
    error("ERROR", sqlstate(e), e.message.clone())
}

/// An error from datafusion-postgres's own handling (planning, execution,
/// encoding), classified and scrubbed of storage locations like the
/// engine's; the protocol's own errors pass as they are.
fn scrubbed(engine: &tessera_query::Engine, e: PgWireError) -> PgWireError {
    match e {
        PgWireError::ApiError(e) => match e.downcast::<datafusion::error::DataFusionError>() {
            Ok(df) => query_error(&engine.error(*df)),
            Err(other) => query_error(&engine.scrubbed(ErrorKind::Internal, &other.to_string())),
        },
        other => other,
    }
}

/// Cleartext password authentication: the password is the principal's
/// token, and the user name must be that principal's.
struct TokenStartup {
    conn: Arc<Conn>,
}

#[async_trait]
impl StartupHandler for TokenStartup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client.send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword)).await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let token = password.into_password()?.password;
                let user = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
                let state = &self.conn.state;
                let principal = state.principal_of_token(&token).filter(|p| p.name == user).ok_or_else(|| {
                    error(
                        "FATAL",
                        "28P01",
                        format!("password authentication failed for user \"{user}\": connect as the principal's name with its token as the password"),
                    )
                })?;
                let connected =
                    connect(state, &principal, Arc::clone(&self.conn.last_tables)).await.map_err(|e| error("FATAL", "XX000", e))?;
                let _ = self.conn.session.set(connected);
                let mut parameters = DefaultServerParameterProvider::default();
                parameters.default_transaction_read_only = true;
                finish_authentication(client, &parameters).await?;
                tracing::info!(principal = %principal.name, "PostgreSQL connection authenticated");
            }
            _ => {}
        }
        Ok(())
    }
}

/// The principal's session, with `pg_catalog`, behind datafusion-postgres's
/// protocol handling, with our sandbox as the first hook.
async fn connect(state: &AppState, principal: &Principal, state_tables: Arc<Mutex<Vec<String>>>) -> Result<Connected, String> {
    let engine = state.engine.as_ref().ok_or("this server does not serve SQL: it has no warehouse configured")?;
    let session = engine.session(principal).await.map_err(|e| e.message)?.with_system_catalog();
    let context = SessionContext::new_with_state(session.state(HashMap::new()).map_err(|e| e.message)?);
    setup_pg_catalog(&context, tessera_query::catalog::SYSTEM_CATALOG, EmptyContextProvider).map_err(|e| e.to_string())?;
    let system = context.catalog(tessera_query::catalog::SYSTEM_CATALOG).ok_or("the session has no system catalog")?;
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(Sandbox { session: session.clone(), system, tables: Arc::clone(&state_tables) }),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ];
    let service = Arc::new(DfSessionService::new_with_hooks(Arc::new(context), hooks));
    Ok(Connected { session, service })
}

/// What the protocol may do with a statement.
enum Kind {
    /// A read: checked, planned and run by the engine's rules.
    Read,
    /// Protocol chatter the later hooks answer (SHOW, BEGIN, COMMIT, client settings).
    Protocol,
    /// Everything else.
    Refused(String),
}

/// Client settings that drivers send and the protocol layer keeps per connection.
const CLIENT_SETTINGS: [&str; 8] = [
    "statement_timeout",
    "datestyle",
    "bytea_output",
    "intervalstyle",
    "application_name",
    "extra_float_digits",
    "search_path",
    "client_encoding",
];

fn kind(statement: &Statement) -> Kind {
    match statement {
        Statement::ShowVariable { .. } | Statement::StartTransaction { .. } | Statement::Commit { .. } | Statement::Rollback { .. } => {
            Kind::Protocol
        }
        Statement::Set(Set::SetTimeZone { .. }) => Kind::Protocol,
        Statement::Set(Set::SingleAssignment { variable, .. })
            if CLIENT_SETTINGS.contains(&variable.to_string().to_lowercase().as_str()) =>
        {
            Kind::Protocol
        }
        Statement::Set(_) => Kind::Refused(format!(
            "`{statement}` is not allowed: only client settings ({}) and the time zone can be set",
            CLIENT_SETTINGS.join(", ")
        )),
        other => match sandbox::check_statement(&mut DFStatement::Statement(Box::new(other.clone()))) {
            Ok(_) => Kind::Read,
            Err(Refusal::NotReadOnly(m) | Refusal::Syntax(m) | Refusal::TooComplex(m)) => Kind::Refused(m),
        },
    }
}

/// The first hook: the sandbox, and planning of reads with their `as_of` tables.
struct Sandbox {
    session: Session,
    /// The connection's system catalog (with `pg_catalog`), kept across statements.
    system: Arc<dyn datafusion::catalog::CatalogProvider>,
    /// Where the tables of the last planned statement are left for its audit record.
    tables: Arc<Mutex<Vec<String>>>,
}

impl Sandbox {
    /// Checks and plans one statement, under the query time limit. The
    /// caller's catalogs are built anew for each statement (as for each
    /// HTTP query): a connection that stays open sees a product's new
    /// classifications, versions and retired generations as they come.
    async fn plan(&self, statement: &Statement, context: &SessionContext) -> Result<LogicalPlan, QueryError> {
        let engine = self.session.engine();
        let limit = engine.limits().timeout;
        let planned = tokio::time::timeout(limit, async {
            let mut df_statement = DFStatement::Statement(Box::new(statement.clone()));
            let calls = sandbox::check_statement(&mut df_statement)?;
            let session = engine.session(self.session.principal()).await?.with_system(Arc::clone(&self.system));
            context.register_catalog_list(Arc::clone(session.catalogs()) as _);
            let tables = session.resolve_as_of(&calls).await?;
            context.register_udtf(sandbox::AS_OF, Session::as_of_function(tables));
            let plan = context.state().statement_to_plan(df_statement).await.map_err(|e| engine.error(e))?;
            tessera_query::verify_read_only(&plan)?;
            size_batches(context, &plan, engine.limits());
            Ok(plan)
        })
        .await
        .unwrap_or_else(|_| Err(engine.timeout_error()));
        if let (Ok(plan), Ok(mut tables)) = (&planned, self.tables.lock()) {
            *tables = tessera_query::tables_in(plan);
        }
        planned
    }
}

impl Sandbox {
    /// A key lookup answered without a plan ([`tessera_query::lookup`]),
    /// under the query time limit; `None` for the general path.
    async fn lookup(&self, statement: &Statement) -> Result<Option<tessera_query::Looked>, QueryError> {
        let engine = self.session.engine();
        let looked = tokio::time::timeout(engine.limits().timeout, engine.lookup(self.session.principal(), statement))
            .await
            .map_err(|_| engine.timeout_error())?;
        if let (Some(looked), Ok(mut tables)) = (&looked, self.tables.lock()) {
            *tables = vec![looked.table.clone()];
        }
        Ok(looked)
    }
}

#[async_trait]
impl QueryHook for Sandbox {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match kind(statement) {
            Kind::Protocol => None,
            Kind::Refused(m) => Some(Err(error("ERROR", "25006", m))),
            Kind::Read => Some(
                async {
                    let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
                    if let Some(looked) = self.lookup(statement).await.map_err(|e| query_error(&e))? {
                        let fields = Arc::new(arrow_schema_to_pg_fields(&looked.schema, &Format::UnifiedText, Some(options))?);
                        let rows = looked.batch.map(|batch| encode_recordbatch(Arc::clone(&fields), batch)).into_iter().flatten();
                        return Ok(Response::Query(QueryResponse::new(fields, futures::stream::iter(rows))));
                    }
                    let plan = self.plan(statement, context).await.map_err(|e| query_error(&e))?;
                    let engine = self.session.engine();
                    let frame = context.execute_logical_plan(plan).await.map_err(|e| query_error(&engine.error(e)))?;
                    // Physical planning happens here: its errors are classified and scrubbed like the rest.
                    let encoded = encode_dataframe(frame, &Format::UnifiedText, Some(options)).await.map_err(|e| scrubbed(engine, e))?;
                    Ok(Response::Query(encoded))
                }
                .await,
            ),
        }
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        match kind(statement) {
            Kind::Protocol => None,
            Kind::Refused(m) => Some(Err(error("ERROR", "25006", m))),
            Kind::Read => Some(self.plan(statement, context).await.map_err(|e| query_error(&e))),
        }
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        plan: &LogicalPlan,
        _params: &ParamValues,
        context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match kind(statement) {
            Kind::Refused(m) => Some(Err(error("ERROR", "25006", m))),
            _ => {
                // Statements parsed earlier on this connection may run in another order.
                size_batches(context, plan, self.session.engine().limits());
                None
            }
        }
    }
}

/// The connection's batch size for running `plan` next (see
/// `tessera_query::budget::batch_rows`): smaller when it gathers groups into values.
fn size_batches(context: &SessionContext, plan: &LogicalPlan, limits: &tessera_query::Limits) {
    tessera_query::budget::size_batches(context.state_ref().write().config_mut().options_mut(), plan, limits.memory_bytes);
}

/// The bounds on a statement's text, then a slot for one more query of the
/// principal (refusals are audited).
async fn admit(connected: &Connected, sql: &str) -> PgWireResult<tessera_query::Permit> {
    let engine = connected.session.engine().clone();
    let principal = connected.session.principal().clone();
    let outcome = match engine.check_bounds(sql).await {
        Ok(()) => engine.admit(&principal).await,
        Err(e) => Err(e),
    };
    outcome.map_err(|e| {
        Audit::start(&engine, &principal, "pgwire", sql).finish(0, Vec::new(), Err(&e));
        query_error(&e)
    })
}

/// The query handlers: datafusion-postgres's, with every result under the
/// engine's row and time limits and audited.
struct Queries {
    conn: Arc<Conn>,
    parser: Arc<AuditedParser>,
}

impl Queries {
    fn new(conn: Arc<Conn>) -> Self {
        Self { parser: Arc::new(AuditedParser { conn: Arc::clone(&conn) }), conn }
    }

    fn audit(&self, sql: &str) -> PgWireResult<Audit> {
        let connected = self.conn.connected()?;
        Ok(Audit::start(connected.session.engine(), connected.session.principal(), "pgwire", sql))
    }

    /// The bounds on the text, then a slot for one more query of the
    /// principal (refusals are audited).
    async fn admit(&self, sql: &str) -> PgWireResult<tessera_query::Permit> {
        admit(self.conn.connected()?, sql).await
    }

    /// Wraps a response's rows in the limits and the audit; audits anything else at once.
    fn govern(
        &self,
        sql: &str,
        tables: Vec<String>,
        result: PgWireResult<Response>,
        permit: Option<Arc<tessera_query::Permit>>,
    ) -> PgWireResult<Response> {
        let audit = self.audit(sql)?;
        let engine = self.conn.connected()?.session.engine().clone();
        let result = result.map_err(|e| scrubbed(&engine, e));
        match result {
            Ok(Response::Query(mut query)) => {
                let limits = self.conn.connected()?.session.engine().limits().clone();
                let rows = std::mem::replace(&mut query.data_rows, Box::pin(futures::stream::empty()));
                query.data_rows = Box::pin(Governed {
                    rows,
                    count: 0,
                    max_rows: limits.max_rows,
                    deadline: Box::pin(tokio::time::sleep_until(audit.started() + limits.timeout)),
                    timeout: limits.timeout,
                    tables,
                    audit: Some(audit),
                    engine,
                    _permit: permit,
                });
                Ok(Response::Query(query))
            }
            Ok(other) => {
                audit.finish(0, tables, Ok(()));
                Ok(other)
            }
            Err(e) => {
                let kind = match &e {
                    PgWireError::UserError(info) if info.code == "25006" || info.code == "42601" => ErrorKind::ReadOnly,
                    _ => ErrorKind::Invalid,
                };
                audit.finish(0, tables, Err(&QueryError { kind, message: e.to_string() }));
                Err(e)
            }
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, sql: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let permit = match self.admit(sql).await {
            Ok(p) => p,
            Err(e) => return Err(e),
        };
        let service = Arc::clone(&self.conn.connected()?.service);
        let result = SimpleQueryHandler::do_query(service.as_ref(), client, sql).await;
        let tables = self.conn.last_tables.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        let permit = Arc::new(permit);
        match result {
            Ok(responses) => responses.into_iter().map(|r| self.govern(sql, tables.clone(), Ok(r), Some(Arc::clone(&permit)))).collect(),
            Err(e) => Err(self.govern(sql, tables, Err(e), None).err().unwrap_or(PgWireError::NotReadyForQuery)),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = DfStmt;
    type QueryParser = AuditedParser;

    fn query_parser(&self) -> Arc<AuditedParser> {
        Arc::clone(&self.parser)
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<DfStmt>, max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = DfStmt>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (sql, parsed) = &portal.statement.statement;
        let tables = parsed.as_ref().map(|(_, plan)| tessera_query::tables_in(plan)).unwrap_or_default();
        let permit = self.admit(sql).await?;
        let service = Arc::clone(&self.conn.connected()?.service);
        let result = ExtendedQueryHandler::do_query(service.as_ref(), client, portal, max_rows).await;
        self.govern(sql, tables, result, Some(Arc::new(permit)))
    }
}

/// datafusion-postgres's parser (which runs the hooks), remembering the
/// tables of each plan and auditing statements refused at parse time.
struct AuditedParser {
    conn: Arc<Conn>,
}

#[async_trait]
impl QueryParser for AuditedParser {
    type Statement = DfStmt;

    async fn parse_sql<C>(&self, client: &C, sql: &str, types: &[Option<Type>]) -> PgWireResult<Option<DfStmt>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let connected = self.conn.connected()?;
        // Parsing a prepared statement plans it: the same bounds and the
        // same admission as running one.
        let _permit = admit(connected, sql).await?;
        let parser: Arc<Parser> = connected.service.query_parser();
        let parsed = parser.parse_sql(client, sql, types).await;
        if let Err(e) = &parsed {
            let audit = Audit::start(connected.session.engine(), connected.session.principal(), "pgwire", sql);
            audit.finish(0, Vec::new(), Err(&QueryError { kind: ErrorKind::Invalid, message: e.to_string() }));
        }
        parsed
    }

    fn get_parameter_types(&self, statement: &DfStmt) -> PgWireResult<Vec<Type>> {
        self.conn.connected()?.service.query_parser().get_parameter_types(statement)
    }

    fn get_result_schema(&self, statement: &DfStmt, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        self.conn.connected()?.service.query_parser().get_result_schema(statement, format)
    }
}

/// Result rows under the row limit and the deadline, audited when they end.
struct Governed {
    rows: pgwire::api::results::SendableRowStream,
    count: usize,
    max_rows: usize,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: std::time::Duration,
    tables: Vec<String>,
    audit: Option<Audit>,
    engine: tessera_query::Engine,
    /// The query's admission slot, held until its rows end.
    _permit: Option<Arc<tessera_query::Permit>>,
}

impl Governed {
    fn finish(&mut self, outcome: Result<(), &QueryError>) {
        if let Some(audit) = self.audit.take() {
            audit.finish(self.count, std::mem::take(&mut self.tables), outcome);
        }
    }
}

impl Stream for Governed {
    type Item = PgWireResult<DataRow>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.audit.is_none() {
            return Poll::Ready(None);
        }
        if self.count >= self.max_rows {
            // The row limit: the result ends here.
            self.finish(Ok(()));
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let e = QueryError {
                kind: ErrorKind::Timeout,
                message: format!("canceling statement: it ran longer than its limit of {} s", self.timeout.as_secs_f64()),
            };
            self.finish(Err(&e));
            return Poll::Ready(Some(Err(query_error(&e))));
        }
        match self.rows.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(row))) => {
                self.count += 1;
                Poll::Ready(Some(Ok(row)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e = scrubbed(&self.engine, e);
                let message = e.to_string();
                self.finish(Err(&QueryError { kind: ErrorKind::Execution, message }));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.finish(Ok(()));
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Governed {
    fn drop(&mut self) {
        // Dropped before its end: the client went away or closed the portal.
        if let Some(audit) = self.audit.take() {
            audit.cancelled(self.count, std::mem::take(&mut self.tables));
        }
    }
}
