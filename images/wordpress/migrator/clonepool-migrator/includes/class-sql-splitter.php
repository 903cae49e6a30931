<?php
/**
 * Splits an SQL dump into statements while streaming, and classifies each statement.
 *
 * Understands what mysqldump / mariadb-dump / this plugin write: '…' and "…" strings with
 * backslash escapes and doubled quotes, `identifiers`, -- and # line comments, /* … *\/ comments
 * (dropped), executable /*! … *\/ and /*M! … *\/ comments (kept), DELIMITER lines, and MariaDB's
 * sandbox line `/*!999999\- enable the sandbox mode *\/` (a mariadb client command: dropped).
 *
 * @package clonepool-migrator
 */

defined('ABSPATH') || exit;

final class Clonepool_Sql_Exception extends RuntimeException
{
}

final class Clonepool_Sql_Splitter
{
    private string $buf = '';
    private int $pos = 0;
    /** Start of the statement text not yet copied into $sql. */
    private int $start = 0;
    /** Start of the code (outside strings) not yet copied into $code. */
    private int $code_start = 0;
    private string $sql = '';
    private string $code = '';
    /** n: code, s: '…', d: "…", b: `…`, l: line comment, c: block comment. */
    private string $state = 'n';
    private bool $at_start = true;
    private string $delimiter = ';';
    private int $max_statement;
    private int $count = 0;

    public function __construct(int $max_statement = 67108864)
    {
        $this->max_statement = $max_statement;
    }

    /**
     * Feeds bytes; returns the statements completed by them.
     *
     * @return list<array{sql:string,code:string}> code is the statement with string contents removed
     */
    public function feed(string $chunk): array
    {
        $this->buf .= $chunk;
        return $this->scan(false);
    }

    /** @return list<array{sql:string,code:string}> the last statement when it had no delimiter */
    public function finish(): array
    {
        $out = $this->scan(true);
        if (in_array($this->state, ['s', 'd', 'b'], true)) {
            throw new Clonepool_Sql_Exception('the SQL ends inside a quoted string (truncated dump?)');
        }
        if ($this->state === 'n' && !$this->at_start) {
            $this->sql .= substr($this->buf, $this->start, $this->pos - $this->start);
            $this->code .= substr($this->buf, $this->code_start, $this->pos - $this->code_start);
        }
        $this->buf = '';
        $this->pos = $this->start = $this->code_start = 0;
        if (trim($this->sql) !== '') {
            $out[] = ['sql' => trim($this->sql), 'code' => trim($this->code)];
            $this->count++;
        }
        $this->sql = $this->code = '';
        $this->at_start = true;
        return $out;
    }

    /** Statements returned so far. */
    public function count(): int
    {
        return $this->count;
    }

    /** @return list<array{sql:string,code:string}> */
    private function scan(bool $eof): array
    {
        $out = [];
        $buf = $this->buf;
        $len = strlen($buf);
        $pos = $this->pos;
        while ($pos < $len) {
            $state = $this->state;
            if ($state === 'n') {
                if ($this->at_start) {
                    $pos += strspn($buf, " \t\r\n", $pos);
                    if ($pos >= $len) {
                        break;
                    }
                    if (!$eof && $len - $pos < 12) {
                        break; // need a few bytes to recognise DELIMITER or the sandbox line
                    }
                    if (strncasecmp(substr($buf, $pos, 10), 'DELIMITER ', 10) === 0) {
                        $nl = strpos($buf, "\n", $pos);
                        if ($nl === false && !$eof) {
                            break;
                        }
                        $end = $nl === false ? $len : $nl;
                        $new = trim(substr($buf, $pos + 10, $end - $pos - 10));
                        if ($new === '' || strlen($new) > 8 || strpbrk($new, "'\"`\\") !== false) {
                            throw new Clonepool_Sql_Exception('bad DELIMITER line');
                        }
                        $this->delimiter = $new;
                        $pos = $nl === false ? $len : $nl + 1;
                        continue;
                    }
                    if (substr($buf, $pos, 11) === '/*!999999\\-' || substr($buf, $pos, 12) === '/*M!999999\\-') {
                        // mariadb-dump's "enable the sandbox mode" line: a client command.
                        $this->state = 'c';
                        $pos += 3;
                        continue;
                    }
                    $this->start = $this->code_start = $pos;
                    $this->sql = $this->code = '';
                    $this->at_start = false;
                }
                $delim = $this->delimiter;
                $pos += strcspn($buf, "'\"`#-/" . $delim[0], $pos);
                if ($pos >= $len) {
                    break;
                }
                $c = $buf[$pos];
                if ($c === "'" || $c === '"') {
                    $this->code .= substr($buf, $this->code_start, $pos + 1 - $this->code_start);
                    $this->state = $c === "'" ? 's' : 'd';
                    $pos++;
                } elseif ($c === '`') {
                    $this->state = 'b';
                    $pos++;
                } elseif ($c === $delim[0] && ($len - $pos >= strlen($delim) || $eof)
                    && substr($buf, $pos, strlen($delim)) === $delim) {
                    $this->sql .= substr($buf, $this->start, $pos - $this->start);
                    $this->code .= substr($buf, $this->code_start, $pos - $this->code_start);
                    $pos += strlen($delim);
                    $sql = trim($this->sql);
                    if ($sql !== '') {
                        $out[] = ['sql' => $sql, 'code' => trim($this->code)];
                        $this->count++;
                    }
                    $this->sql = $this->code = '';
                    $this->start = $this->code_start = $pos;
                    $this->at_start = true;
                } elseif ($c === $delim[0] && $len - $pos < strlen($delim)) {
                    break; // maybe the start of a longer delimiter: wait for more bytes
                } elseif ($c === '#' || $c === '-' || $c === '/') {
                    if (!$eof && $len - $pos < 4) {
                        break;
                    }
                    $next = $buf[$pos + 1] ?? '';
                    if ($c === '#' || ($c === '-' && $next === '-' && ($pos + 2 >= $len || ctype_space($buf[$pos + 2])))) {
                        $this->cut($buf, $pos);
                        $this->state = 'l';
                        $pos++;
                    } elseif ($c === '/' && $next === '*') {
                        $third = $buf[$pos + 2] ?? '';
                        if ($third === '!' || ($third === 'M' && ($buf[$pos + 3] ?? '') === '!')) {
                            $pos += 2; // executable comment: its content is SQL
                        } else {
                            $this->cut($buf, $pos);
                            $this->state = 'c';
                            $pos += 2;
                        }
                    } else {
                        $pos++;
                    }
                } else {
                    $pos++;
                }
            } elseif ($state === 's' || $state === 'd' || $state === 'b') {
                $q = $state === 's' ? "'" : ($state === 'd' ? '"' : '`');
                $pos += strcspn($buf, $state === 'b' ? '`' : "\\" . $q, $pos);
                if ($pos >= $len) {
                    break;
                }
                if ($buf[$pos] === '\\') {
                    if ($pos + 1 >= $len) {
                        if ($eof) {
                            $pos++;
                        }
                        break;
                    }
                    $pos += 2;
                    continue;
                }
                if ($pos + 1 >= $len && !$eof) {
                    break; // a doubled quote may follow
                }
                if (($buf[$pos + 1] ?? '') === $q) {
                    $pos += 2;
                    continue;
                }
                if ($state !== 'b') {
                    $this->code_start = $pos;
                }
                $this->state = 'n';
                $pos++;
            } elseif ($state === 'l') {
                $nl = strpos($buf, "\n", $pos);
                if ($nl === false) {
                    $pos = $len;
                    break;
                }
                $pos = $nl;
                $this->resume($pos);
            } else { // block comment
                $end = strpos($buf, '*/', $pos);
                if ($end === false) {
                    $pos = max($pos, $len - 1);
                    break;
                }
                $pos = $end + 2;
                $this->resume($pos);
            }
        }
        // Keep only what is still needed: the statement text so far moves into $sql/$code.
        if (in_array($this->state, ['n', 's', 'd', 'b'], true) && !$this->at_start) {
            $this->sql .= substr($buf, $this->start, $pos - $this->start);
            if ($this->state !== 's' && $this->state !== 'd') {
                $this->code .= substr($buf, $this->code_start, $pos - $this->code_start);
            }
        }
        $this->buf = (string) substr($buf, $pos);
        $this->pos = $this->start = $this->code_start = 0;
        if (strlen($this->sql) > $this->max_statement) {
            throw new Clonepool_Sql_Exception("a statement is longer than {$this->max_statement} bytes");
        }
        return $out;
    }

    /** A comment starts at $pos: keep the statement text before it. */
    private function cut(string $buf, int $pos): void
    {
        if (!$this->at_start) {
            $this->sql .= substr($buf, $this->start, $pos - $this->start) . ' ';
            $this->code .= substr($buf, $this->code_start, $pos - $this->code_start) . ' ';
        }
    }

    /** A comment ended before $pos: the statement (if any) continues there. */
    private function resume(int $pos): void
    {
        $this->state = 'n';
        $this->start = $this->code_start = $pos;
        if (trim($this->sql) === '') {
            $this->at_start = true;
            $this->sql = $this->code = '';
        }
    }
}

/**
 * What an SQL statement does, judged from its code (string contents removed). Only statements a
 * dump of one site's tables needs are allowed; anything that reaches other databases, users or
 * files is refused.
 */
final class Clonepool_Sql_Classifier
{
    private const IDENT = '(`(?:[^`]|``)+`|[A-Za-z0-9_$]+)(\s*\.\s*(?:`(?:[^`]|``)+`|[A-Za-z0-9_$]+))?';

    /**
     * @return array{kind:string,table?:string,verb?:string,reason?:string}
     *   kind: set (session setting), table (acts on one table), ignore (LOCK/UNLOCK, transactions),
     *   skip (views, triggers, routines: not imported), refuse (never allowed)
     */
    public static function classify(string $code): array
    {
        $head = substr($code, 0, 8192);
        $head = trim((string) preg_replace(['~/\*M?!\d{0,6}~', '~\*/~', '~\s+~'], [' ', ' ', ' '], $head));
        $shown = substr($head, 0, 80);
        if (preg_match('~^SET\s~i', $head)) {
            if (preg_match('~^SET\s+(GLOBAL|PERSIST|PERSIST_ONLY|PASSWORD|ROLE|DEFAULT\s+ROLE|STATEMENT)\b|@@global\.~i', $head)) {
                return ['kind' => 'refuse', 'reason' => "server-wide setting: $shown"];
            }
            return ['kind' => 'set'];
        }
        if (preg_match('~^(LOCK|UNLOCK)\s+TABLES?\b~i', $head)
            || preg_match('~^(START\s+TRANSACTION|BEGIN|COMMIT|ROLLBACK)\b~i', $head)) {
            return ['kind' => 'ignore'];
        }
        $id = self::IDENT;
        if (preg_match("~^DROP\\s+(?:TEMPORARY\\s+)?TABLE\\s+(?:IF\\s+EXISTS\\s+)?$id\\s*$~i", $head, $m)) {
            return self::table($m, 'drop', $shown);
        }
        if (preg_match("~^CREATE\\s+(?:TEMPORARY\\s+)?TABLE\\s+(?:IF\\s+NOT\\s+EXISTS\\s+)?$id\\s*\\(~i", $head, $m)) {
            if (preg_match('~\bSELECT\b~i', $code)) {
                return ['kind' => 'refuse', 'reason' => "CREATE TABLE … SELECT: $shown"];
            }
            return self::table($m, 'create', $shown);
        }
        if (preg_match("~^(?:INSERT|REPLACE)\\s+(?:(?:LOW_PRIORITY|DELAYED|HIGH_PRIORITY|IGNORE)\\s+)*(?:INTO\\s+)?$id\\s*(?:\\([^)]*\\)\\s*)?(?:VALUES?|SET)\\b~i", $head, $m)) {
            if (preg_match('~\bSELECT\b~i', $code)) {
                return ['kind' => 'refuse', 'reason' => "INSERT with a subquery: $shown"];
            }
            return self::table($m, 'insert', $shown);
        }
        if (preg_match("~^ALTER\\s+TABLE\\s+$id\\s+(?:DISABLE|ENABLE)\\s+KEYS\\s*$~i", $head, $m)) {
            return self::table($m, 'alter', $shown);
        }
        if (preg_match("~^TRUNCATE\\s+(?:TABLE\\s+)?$id\\s*$~i", $head, $m)) {
            return self::table($m, 'truncate', $shown);
        }
        if (preg_match('~^(CREATE|DROP|ALTER)\s+(?:OR\s+REPLACE\s+)?(?:(?:ALGORITHM\s*=\s*\w+|DEFINER\s*=\s*\S+|SQL\s+SECURITY\s+\w+|DEFINER)\s+)*(VIEW|TRIGGER|PROCEDURE|FUNCTION|EVENT)\b~i', $head, $m)
            || preg_match('~^ALTER\s+DATABASE\s+\S+\s+(DEFAULT\s+)?(CHARACTER\s+SET|CHARSET|COLLATE)\b~i', $head)) {
            return ['kind' => 'skip', 'reason' => 'views, triggers, routines and events are not imported: ' . $shown];
        }
        return ['kind' => 'refuse', 'reason' => "statement not allowed in an import: $shown"];
    }

    /** @param array<int,string> $m */
    private static function table(array $m, string $verb, string $shown): array
    {
        if (!empty($m[2])) {
            return ['kind' => 'refuse', 'reason' => "names a table of another database: $shown"];
        }
        $name = $m[1];
        if ($name[0] === '`') {
            $name = str_replace('``', '`', substr($name, 1, -1));
        }
        return ['kind' => 'table', 'table' => $name, 'verb' => $verb];
    }
}
