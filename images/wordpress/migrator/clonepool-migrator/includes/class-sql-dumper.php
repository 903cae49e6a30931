<?php
/**
 * Dumps this site's tables as SQL through $wpdb, a few hundred rows per SELECT.
 *
 * Output is handed to a sink callable one complete statement (or comment block) at a time, so
 * callers can cut the dump into parts at statement boundaries. Strings are escaped with
 * mysqli_real_escape_string (binary-safe); BLOB/BINARY/BIT/spatial columns are written as hex.
 *
 * @package clonepool-migrator
 */

defined('ABSPATH') || exit;

final class Clonepool_Sql_Dumper
{
    /** @var wpdb */
    private $wpdb;
    /** @var callable(string):void */
    private $emit;
    private int $rows_per_select;
    private int $insert_bytes;
    /** Aim for about this many bytes per SELECT when rows are large. */
    private const SELECT_BYTES = 8388608;

    /**
     * @param wpdb                  $wpdb
     * @param callable(string):void $emit
     */
    public function __construct($wpdb, callable $emit, int $rows_per_select = 500, int $insert_bytes = 1048576)
    {
        $this->wpdb = $wpdb;
        $this->emit = $emit;
        $this->rows_per_select = max(1, $rows_per_select);
        $this->insert_bytes = max(4096, $insert_bytes);
    }

    /**
     * Base tables of this site: its table prefix, minus tables of another WordPress site whose
     * longer prefix starts with ours (e.g. `wp_shop_` next to `wp_`). Views are left out.
     *
     * @return array{tables:list<string>,skipped:list<array{table:string,reason:string}>}
     */
    public static function site_tables($wpdb): array
    {
        $prefix = $wpdb->base_prefix;
        $rows = $wpdb->get_results('SHOW FULL TABLES', ARRAY_N);
        if ($wpdb->last_error !== '') {
            throw new RuntimeException('cannot list tables: ' . $wpdb->last_error);
        }
        $all = [];
        foreach ((array) $rows as $row) {
            $all[(string) $row[0]] = strtoupper((string) ($row[1] ?? 'BASE TABLE'));
        }
        $foreign = [];
        foreach (array_keys($all) as $name) {
            if (strlen($name) > strlen($prefix) + 7 && strpos($name, $prefix) === 0 && substr($name, -7) === 'options') {
                $other = substr($name, 0, -7);
                if ($other !== $prefix && isset($all[$other . 'posts'], $all[$other . 'postmeta'])) {
                    $foreign[] = $other;
                }
            }
        }
        $tables = [];
        $skipped = [];
        foreach ($all as $name => $type) {
            if (strpos($name, $prefix) !== 0) {
                continue;
            }
            foreach ($foreign as $other) {
                if (strpos($name, $other) === 0) {
                    $skipped[] = ['table' => $name, 'reason' => "belongs to the WordPress site with table prefix $other"];
                    continue 2;
                }
            }
            if ($type !== 'BASE TABLE') {
                $skipped[] = ['table' => $name, 'reason' => 'views are not exported'];
                continue;
            }
            $tables[] = $name;
        }
        sort($tables, SORT_STRING);
        return ['tables' => $tables, 'skipped' => $skipped];
    }

    /** @return array<string,array{rows:int,bytes:int}> estimates from SHOW TABLE STATUS */
    public static function table_estimates($wpdb): array
    {
        $out = [];
        $like = $wpdb->esc_like($wpdb->base_prefix) . '%';
        foreach ((array) $wpdb->get_results($wpdb->prepare('SHOW TABLE STATUS LIKE %s', $like), ARRAY_A) as $row) {
            $out[(string) $row['Name']] = [
                'rows' => (int) ($row['Rows'] ?? 0),
                'bytes' => (int) ($row['Data_length'] ?? 0),
                'avg_row' => (int) ($row['Avg_row_length'] ?? 0),
            ];
        }
        return $out;
    }

    public static function quote_ident(string $name): string
    {
        return '`' . str_replace('`', '``', $name) . '`';
    }

    /** Session settings at the top of a dump; the footer puts them back. */
    public function header(string $title): void
    {
        $charset = preg_match('/^\w+$/', (string) $this->wpdb->charset) ? $this->wpdb->charset : 'utf8mb4';
        ($this->emit)(
            '-- ' . str_replace(["\r", "\n"], ' ', $title) . "\n"
            . "/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;\n"
            . "/*!40101 SET NAMES $charset */;\n"
            . "/*!40103 SET @OLD_TIME_ZONE=@@TIME_ZONE */;\n"
            . "/*!40103 SET TIME_ZONE='+00:00' */;\n"
            . "/*!40014 SET @OLD_FOREIGN_KEY_CHECKS=@@FOREIGN_KEY_CHECKS, FOREIGN_KEY_CHECKS=0 */;\n"
            . "/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;\n"
        );
    }

    public function footer(): void
    {
        ($this->emit)(
            "/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;\n"
            . "/*!40014 SET FOREIGN_KEY_CHECKS=@OLD_FOREIGN_KEY_CHECKS */;\n"
            . "/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;\n"
            . "/*!40101 SET CHARACTER_SET_CLIENT=@OLD_CHARACTER_SET_CLIENT */;\n"
            . "-- dump complete\n"
        );
    }

    /**
     * Starts a consistent read view for the dump (InnoDB) with TIMESTAMPs read in UTC, as the
     * dump header tells the importer.
     */
    public function begin(): void
    {
        $this->query('SET @clonepool_old_tz = @@session.time_zone');
        $this->query("SET time_zone = '+00:00'");
        $this->query('SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ');
        $this->query('START TRANSACTION WITH CONSISTENT SNAPSHOT');
    }

    public function end(): void
    {
        $this->query('COMMIT');
        $this->query('SET time_zone = @clonepool_old_tz');
    }

    /**
     * DROP TABLE IF EXISTS, CREATE TABLE and extended INSERTs for one table.
     *
     * @return array{rows:int,bytes:int}
     */
    public function dump_table(string $table, int $avg_row_length = 0): array
    {
        $q = self::quote_ident($table);
        $create = $this->wpdb->get_row("SHOW CREATE TABLE $q", ARRAY_N);
        $this->check("SHOW CREATE TABLE $table");
        if (!is_array($create) || !isset($create[1])) {
            throw new RuntimeException("cannot read the definition of table $table");
        }
        $bytes = 0;
        $head = "\n--\n-- Table $q\n--\n\nDROP TABLE IF EXISTS $q;\n" . $create[1] . ";\n\n";
        ($this->emit)($head);
        $bytes += strlen($head);

        $columns = $this->wpdb->get_results("SHOW COLUMNS FROM $q", ARRAY_A);
        $this->check("SHOW COLUMNS FROM $table");
        $names = [];
        $binary = [];
        $types = [];
        foreach ((array) $columns as $col) {
            if (stripos((string) ($col['Extra'] ?? ''), 'GENERATED') !== false) {
                continue; // generated columns are computed by the server
            }
            $names[] = (string) $col['Field'];
            $types[] = strtolower((string) $col['Type']);
            $binary[] = (bool) preg_match('/blob|binary|^bit|geometry|point|linestring|polygon/i', (string) $col['Type']);
        }
        if ($names === []) {
            return ['rows' => 0, 'bytes' => $bytes];
        }
        $col_list = implode(',', array_map([self::class, 'quote_ident'], $names));

        $pk = [];
        foreach ((array) $this->wpdb->get_results("SHOW KEYS FROM $q WHERE Key_name = 'PRIMARY'", ARRAY_A) as $key) {
            $pk[(int) $key['Seq_in_index']] = (string) $key['Column_name'];
        }
        ksort($pk);
        $pk = array_values($pk);
        $keyset_index = null;
        if (count($pk) === 1) {
            $i = array_search($pk[0], $names, true);
            if ($i !== false && preg_match('/^(tiny|small|medium|big)?int\b/', $types[$i])) {
                $keyset_index = $i;
            }
        }
        $per_select = $this->rows_per_select;
        if ($avg_row_length > 0) {
            $per_select = max(10, min($per_select, intdiv(self::SELECT_BYTES, $avg_row_length)));
        }

        $rows = 0;
        $last = null;
        $offset = 0;
        $insert_head = "INSERT INTO $q ($col_list) VALUES\n";
        $statement = '';
        while (true) {
            if ($keyset_index !== null) {
                $pkq = self::quote_ident($pk[0]);
                $where = $last === null ? '' : " WHERE $pkq > $last";
                $sql = "SELECT $col_list FROM $q$where ORDER BY $pkq LIMIT $per_select";
            } else {
                $order = $pk === [] ? '' : ' ORDER BY ' . implode(',', array_map([self::class, 'quote_ident'], $pk));
                $sql = "SELECT $col_list FROM $q$order LIMIT $per_select OFFSET $offset";
            }
            $batch = $this->wpdb->get_results($sql, ARRAY_N);
            $this->check("SELECT from $table");
            $batch = (array) $batch;
            foreach ($batch as $row) {
                $values = [];
                foreach ($row as $i => $value) {
                    if ($value === null) {
                        $values[] = 'NULL';
                    } elseif ($binary[$i]) {
                        $values[] = $value === '' ? "''" : '0x' . bin2hex($value);
                    } else {
                        $values[] = "'" . $this->escape((string) $value) . "'";
                    }
                }
                $tuple = '(' . implode(',', $values) . ')';
                if ($statement !== '' && strlen($statement) + strlen($tuple) > $this->insert_bytes) {
                    $statement .= ";\n";
                    ($this->emit)($statement);
                    $bytes += strlen($statement);
                    $statement = '';
                }
                $statement .= $statement === '' ? $insert_head . $tuple : ",\n" . $tuple;
                $rows++;
            }
            $n = count($batch);
            if ($n > 0 && $keyset_index !== null) {
                $last = (string) $batch[$n - 1][$keyset_index];
                if (!preg_match('/^-?\d{1,20}$/', $last)) {
                    throw new RuntimeException("unexpected primary key value in table $table");
                }
            }
            $offset += $n;
            unset($batch);
            if ($n < $per_select) {
                break;
            }
        }
        if ($statement !== '') {
            $statement .= ";\n";
            ($this->emit)($statement);
            $bytes += strlen($statement);
        }
        return ['rows' => $rows, 'bytes' => $bytes];
    }

    private function escape(string $value): string
    {
        $dbh = $this->wpdb->dbh;
        if ($dbh instanceof mysqli) {
            return mysqli_real_escape_string($dbh, $value);
        }
        // Same bytes mysqli_real_escape_string escapes for utf8mb4 connections.
        return strtr($value, ["\\" => "\\\\", "\0" => "\\0", "\n" => "\\n", "\r" => "\\r", "'" => "\\'", '"' => '\\"', "\x1a" => "\\Z"]);
    }

    private function query(string $sql): void
    {
        $this->wpdb->query($sql);
        $this->check($sql);
    }

    private function check(string $what): void
    {
        if ($this->wpdb->last_error !== '') {
            throw new RuntimeException("database error during $what: " . $this->wpdb->last_error);
        }
    }
}
