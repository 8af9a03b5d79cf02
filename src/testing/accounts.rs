//! The accounts workload: money moved between accounts in serializable transactions, each transfer
//! logged, so a test can check that no money was made or lost and that every transfer was applied
//! exactly once, whatever faults it ran through.

use tokio_postgres::NoTls;

use crate::error::Error;
use crate::query::Query;
use crate::tx::{Transactor, Tx};

/// A bank of accounts (`accounts`, with a `transfers` log) for transaction tests.
#[derive(Debug, Clone, Copy)]
pub struct Accounts {
    count: i32,
    opening: i64,
}

impl Accounts {
    /// `count` accounts (at least 2) opening with `opening` each.
    pub fn new(count: i32, opening: i64) -> Self {
        Self {
            count: count.max(2),
            opening,
        }
    }

    /// The total that must hold after any number of transfers.
    pub fn total(&self) -> i64 {
        i64::from(self.count) * self.opening
    }

    /// Creates the tables and opens the accounts, through `db` (a [`Db`](crate::Db), a
    /// [`PgService`](crate::PgService), anything that runs a [`Query`]).
    pub async fn create<S>(&self, db: S) -> Result<(), Error>
    where
        S: tower::Service<Query, Response = crate::Response, Error = Error> + Clone,
    {
        use tower::ServiceExt;
        for query in [
            Query::write("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)"),
            Query::write(
                "CREATE TABLE transfers (id serial PRIMARY KEY, from_id int, to_id int, amount bigint)",
            ),
            Query::write("INSERT INTO accounts SELECT g, $2 FROM generate_series(1, $1) g")
                .bind(self.count)
                .bind(self.opening),
        ] {
            db.clone().oneshot(query).await?;
        }
        Ok(())
    }

    /// The accounts worker `worker`'s `i`-th transfer goes from and to: opposite directions in turn, so
    /// concurrent transactions also lock rows in opposite orders (deadlocks as well as serialization
    /// failures).
    pub fn pair(&self, worker: i32, i: i32) -> (i32, i32) {
        let a = 1 + worker.rem_euclid(self.count);
        let b = 1 + (worker + 1).rem_euclid(self.count);
        if (worker + i) % 2 == 0 {
            (a, b)
        } else {
            (b, a)
        }
    }

    /// One transfer inside `tx`: reads the payer's balance, moves at most `most` of it, logs it.
    pub async fn transfer(tx: &Tx<'_>, from: i32, to: i32, most: i64) -> Result<(), Error> {
        let balance: i64 = tx
            .query_one("SELECT balance FROM accounts WHERE id = $1", &[&from])
            .await?
            .try_get(0)
            .unwrap_or(0);
        let amount = balance.min(most);
        tx.execute(
            "UPDATE accounts SET balance = balance - $2 WHERE id = $1",
            &[&from, &amount],
        )
        .await?;
        tx.execute(
            "UPDATE accounts SET balance = balance + $2 WHERE id = $1",
            &[&to, &amount],
        )
        .await?;
        tx.execute(
            "INSERT INTO transfers (from_id, to_id, amount) VALUES ($1, $2, $3)",
            &[&from, &to, &amount],
        )
        .await?;
        Ok(())
    }

    /// Runs `each` transfers from each of `workers` concurrent workers through `transactor`; returns
    /// every outcome.
    pub async fn run_transfers(
        &self,
        transactor: &Transactor,
        workers: i32,
        each: i32,
        most: i64,
    ) -> Vec<Result<(), Error>> {
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..workers {
            let (bank, transactor) = (*self, transactor.clone());
            tasks.spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..each {
                    let (from, to) = bank.pair(worker, i);
                    let outcome = transactor
                        .run(|tx| Box::pin(Accounts::transfer(tx, from, to, most)))
                        .await;
                    outcomes.push(outcome);
                }
                outcomes
            });
        }
        let mut all = Vec::new();
        while let Some(done) = tasks.join_next().await {
            all.extend(done.expect("a transfer worker panicked"));
        }
        all
    }

    /// The total balance and the number of logged transfers, read on a connection of its own to `url`.
    pub async fn audit(url: &str) -> (i64, i64) {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .expect("an audit connection");
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT (SELECT sum(balance)::bigint FROM accounts), (SELECT count(*) FROM transfers)",
                &[],
            )
            .await
            .expect("the audit query");
        (row.get(0), row.get(1))
    }
}
