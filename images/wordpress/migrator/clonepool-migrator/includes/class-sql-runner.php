<?php
/**
 * Runs SQL statements on WordPress's own database connection (mysqli), bypassing $wpdb's query
 * filters and its charset stripping so dumps are imported byte for byte.
 *
 * @package clonepool-migrator
 */

defined('ABSPATH') || exit;

final class Clonepool_Sql_Runner
{
    /** @var mysqli */
    private $dbh;
    private int $executed = 0;

    public function __construct()
    {
        global $wpdb;
        $dbh = $wpdb->dbh;
        if (!($dbh instanceof mysqli)) {
            throw new RuntimeException('the migrator imports SQL through mysqli; this site uses another database driver');
        }
        $this->dbh = $dbh;
    }

    /**
     * Statements of SQL read from chunks, each with its classification.
     *
     * @param iterable<string> $chunks
     * @return Generator<int,array{sql:string,code:string,class:array}>
     */
    public static function statements(iterable $chunks, int $max_statement): Generator
    {
        $splitter = new Clonepool_Sql_Splitter($max_statement);
        foreach ($chunks as $chunk) {
            foreach ($splitter->feed($chunk) as $st) {
                $st['class'] = Clonepool_Sql_Classifier::classify($st['code']);
                yield $st;
            }
        }
        foreach ($splitter->finish() as $st) {
            $st['class'] = Clonepool_Sql_Classifier::classify($st['code']);
            yield $st;
        }
    }

    public function begin(): void
    {
        $this->exec('SET @clonepool_fk = @@FOREIGN_KEY_CHECKS, @clonepool_uc = @@UNIQUE_CHECKS, @clonepool_mode = @@SQL_MODE, @clonepool_tz = @@TIME_ZONE');
        $this->exec("SET FOREIGN_KEY_CHECKS = 0, UNIQUE_CHECKS = 0, SQL_MODE = 'NO_AUTO_VALUE_ON_ZERO'");
    }

    /** Puts the connection back the way WordPress set it up. */
    public function end(): void
    {
        global $wpdb;
        $this->try_exec('SET FOREIGN_KEY_CHECKS = @clonepool_fk, UNIQUE_CHECKS = @clonepool_uc, SQL_MODE = @clonepool_mode, TIME_ZONE = @clonepool_tz');
        $wpdb->set_charset($this->dbh);
        $wpdb->set_sql_mode();
    }

    public function executed(): int
    {
        return $this->executed;
    }

    /** @throws RuntimeException with the server's error */
    public function exec(string $sql): void
    {
        $error = $this->try_exec($sql);
        if ($error !== null) {
            throw new RuntimeException($error);
        }
    }

    /** Runs a statement; returns the server's error message, or null. */
    public function try_exec(string $sql): ?string
    {
        try {
            $result = mysqli_query($this->dbh, $sql);
        } catch (mysqli_sql_exception $e) {
            return $this->describe($sql, $e->getMessage());
        }
        if ($result === false) {
            return $this->describe($sql, mysqli_error($this->dbh));
        }
        if ($result instanceof mysqli_result) {
            mysqli_free_result($result);
        }
        $this->executed++;
        return null;
    }

    /** @return list<string> */
    public function column(string $sql): array
    {
        $out = [];
        try {
            $result = mysqli_query($this->dbh, $sql);
        } catch (mysqli_sql_exception $e) {
            throw new RuntimeException($this->describe($sql, $e->getMessage()));
        }
        if (!($result instanceof mysqli_result)) {
            throw new RuntimeException($this->describe($sql, mysqli_error($this->dbh)));
        }
        while (($row = mysqli_fetch_row($result)) !== null) {
            $out[] = (string) $row[0];
        }
        mysqli_free_result($result);
        return $out;
    }

    public function quote(string $value): string
    {
        return "'" . mysqli_real_escape_string($this->dbh, $value) . "'";
    }

    private function describe(string $sql, string $error): string
    {
        $head = (string) preg_replace('/\s+/', ' ', substr($sql, 0, 100));
        return "database error: $error (in: {$head}…)";
    }
}
