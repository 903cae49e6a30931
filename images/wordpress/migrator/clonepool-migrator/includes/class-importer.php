<?php
/**
 * POST clonepool/v1/import and POST clonepool/v1/rollback.
 *
 * An import (1) spools the request body to a private file (gunzipping it, within the size
 * limit), (2) checks every entry and every SQL statement and refuses hostile or unexpected
 * content before anything changes, (3) backs up the tables and files it will replace, (4)
 * imports, and on failure restores that backup at once.
 *
 * @package clonepool-migrator
 */

defined('ABSPATH') || exit;

/** An import that failed after it started changing the site. */
final class Clonepool_Import_Failed extends RuntimeException
{
    /** @var array<string,mixed> */
    public array $data;

    /** @param array<string,mixed> $data */
    public function __construct(string $message, array $data)
    {
        parent::__construct($message);
        $this->data = $data;
    }
}

final class Clonepool_Importer
{
    private const CHUNK = 1048576;
    private const MAX_LISTED = 1000;

    /** @var array{database:bool,files:bool,tables:?list<string>,include_users:bool,dry_run:bool,keep_site_url:bool} */
    private array $opts;
    /** @var array{max_archive_bytes:int,max_entries:int,max_statement_bytes:int,max_path_bytes:int} */
    private array $limits;
    private string $prefix;
    /** @var list<array{item:string,reason:string}> */
    private array $skipped = [];
    private int $skipped_count = 0;
    /** @var list<string> */
    private array $warnings = [];
    /** @var array<string,float> */
    private array $seconds = [];

    /** @param array{database:bool,files:bool,tables:?list<string>,include_users:bool,dry_run:bool,keep_site_url:bool} $opts */
    public function __construct(array $opts)
    {
        global $wpdb;
        $this->opts = $opts;
        $this->limits = Clonepool_Site::limits();
        $this->prefix = $wpdb->base_prefix;
        if ($opts['tables'] !== null) {
            $this->opts['tables'] = array_values(array_unique(array_map(function (string $t): string {
                return strpos($t, $this->prefix) === 0 ? $t : $this->prefix . $t;
            }, $opts['tables'])));
        }
    }

    /**
     * Runs the whole import on the request body.
     *
     * @return array<string,mixed> the report
     * @throws Clonepool_Refusal      nothing was changed
     * @throws Clonepool_Import_Failed the import failed; data says whether the backup was restored
     */
    public function run(): array
    {
        $started = microtime(true);
        if (is_multisite()) {
            throw new Clonepool_Refusal('clonepool_multisite', 'multisite networks are not supported by the migrator', 501);
        }
        if (function_exists('set_time_limit')) {
            @set_time_limit(0);
        }
        $lock = Clonepool_Backups::lock();
        $spool = null;
        try {
            $t = microtime(true);
            [$spool, $bytes] = $this->spool_body();
            $this->seconds['receive'] = round(microtime(true) - $t, 3);

            $t = microtime(true);
            $plan = $this->plan($spool);
            $this->seconds['check'] = round(microtime(true) - $t, 3);

            if ($this->opts['dry_run']) {
                return $this->report($plan, null, $bytes, $started) + ['dry_run' => true];
            }
            // From here on the site may change: finish even if the client goes away.
            ignore_user_abort(true);
            $t = microtime(true);
            $backup_id = $this->backup($plan);
            $this->seconds['backup'] = round(microtime(true) - $t, 3);

            $t = microtime(true);
            $this->import($plan, $spool, $backup_id);
            $this->seconds['import'] = round(microtime(true) - $t, 3);

            $report = $this->report($plan, $backup_id, $bytes, $started) + ['dry_run' => false];
            $meta = Clonepool_Backups::load($backup_id) ?? [];
            $meta['status'] = 'imported';
            $meta['import_report'] = array_diff_key($report, ['skipped' => true]);
            Clonepool_Backups::save($backup_id, $meta);
            return $report;
        } finally {
            if ($spool !== null && is_file($spool)) {
                @unlink($spool);
            }
            Clonepool_Backups::unlock($lock);
        }
    }

    /**
     * Copies the archive from the request body (raw tar / tar.gz, or a multipart field named
     * "archive") into a private file, gunzipping on the way and enforcing the size limit.
     *
     * @return array{0:string,1:int} [path, uncompressed bytes]
     */
    private function spool_body(): array
    {
        $max = $this->limits['max_archive_bytes'];
        $declared = isset($_SERVER['CONTENT_LENGTH']) && is_numeric($_SERVER['CONTENT_LENGTH']) ? (int) $_SERVER['CONTENT_LENGTH'] : -1;
        if ($declared > $max) {
            throw new Clonepool_Refusal('clonepool_archive_too_large', "the archive ($declared bytes) is larger than this site's limit of $max bytes", 413);
        }
        if (isset($_FILES['archive']['tmp_name']) && is_uploaded_file($_FILES['archive']['tmp_name'])) {
            $in = fopen($_FILES['archive']['tmp_name'], 'rb');
        } else {
            $in = fopen('php://input', 'rb');
        }
        if ($in === false) {
            throw new RuntimeException('cannot read the request body');
        }
        $path = Clonepool_Site::backups_dir() . '/.incoming-' . bin2hex(random_bytes(8)) . '.tar';
        $out = @fopen($path, 'xb');
        if ($out === false) {
            throw new RuntimeException('cannot create a temporary file in ' . Clonepool_Site::backups_dir());
        }
        @chmod($path, 0600);
        $total = 0;
        $inflate = null;
        $first = true;
        try {
            while (!feof($in)) {
                $chunk = fread($in, $inflate === null && !$first ? self::CHUNK : 16384);
                if ($chunk === false || $chunk === '') {
                    break;
                }
                if ($first) {
                    $first = false;
                    if (strncmp($chunk, "\x1f\x8b", 2) === 0) {
                        $inflate = inflate_init(ZLIB_ENCODING_GZIP);
                    }
                }
                if ($inflate !== null) {
                    // Small input chunks keep a "zip bomb" from inflating far past the limit in memory.
                    $chunk = @inflate_add($inflate, $chunk, ZLIB_SYNC_FLUSH);
                    if ($chunk === false) {
                        throw new Clonepool_Refusal('clonepool_bad_archive', 'the gzip data is damaged');
                    }
                }
                $total += strlen($chunk);
                if ($total > $max) {
                    throw new Clonepool_Refusal('clonepool_archive_too_large', "the archive is larger than this site's limit of $max bytes (uncompressed)", 413);
                }
                if ($chunk !== '' && fwrite($out, $chunk) !== strlen($chunk)) {
                    throw new Clonepool_Refusal('clonepool_no_space', 'not enough disk space to receive the archive', 507);
                }
            }
            if ($inflate !== null && inflate_get_status($inflate) !== ZLIB_STREAM_END) {
                throw new Clonepool_Refusal('clonepool_bad_archive', 'the gzip data ends early (truncated upload?)');
            }
            if (!fclose($out)) {
                throw new Clonepool_Refusal('clonepool_no_space', 'not enough disk space to receive the archive', 507);
            }
            $out = null;
        } catch (Throwable $e) {
            if ($out !== null) {
                fclose($out);
            }
            @unlink($path);
            throw $e;
        }
        fclose($in);
        if ($total === 0) {
            @unlink($path);
            $post_max = wp_convert_hr_to_bytes((string) ini_get('post_max_size'));
            if ($declared > 0 && $declared > $post_max && ($_SERVER['REQUEST_METHOD'] ?? '') === 'POST') {
                throw new Clonepool_Refusal('clonepool_archive_too_large', "PHP dropped the body: it is larger than post_max_size ($post_max bytes). Send it with PUT instead of POST, or raise post_max_size", 413);
            }
            throw new Clonepool_Refusal('clonepool_empty_archive', 'the request body is empty: send the archive (tar or tar.gz) as the body, with Content-Type application/x-tar or application/gzip');
        }
        return [$path, $total];
    }

    /**
     * Reads every entry and statement and decides what the import will do. Throws a refusal on
     * anything hostile; changes nothing.
     *
     * @return array<string,mixed>
     */
    private function plan(string $spool): array
    {
        global $wpdb;
        $fh = fopen($spool, 'rb');
        $reader = new Clonepool_Tar_Reader($fh);
        $manifest = null;
        $sql = [];
        $files = [];
        $dirs = [];
        $core = 0;
        $entries = 0;
        try {
            while (($e = $reader->next()) !== null) {
                if (++$entries > $this->limits['max_entries']) {
                    throw new Clonepool_Refusal('clonepool_too_many_entries', "the archive has more than {$this->limits['max_entries']} entries", 413);
                }
                $name = Clonepool_Files::normalize_name($e['name'], $this->limits['max_path_bytes']);
                $type = $e['type'];
                if (!in_array($type, ['0', '5', '7'], true)) {
                    $what = ['1' => 'a hard link', '2' => 'a symbolic link', '3' => 'a character device', '4' => 'a block device', '6' => 'a FIFO'][$type] ?? "an entry of type '$type'";
                    throw new Clonepool_Refusal('clonepool_hostile_archive', "the archive holds $what (" . Clonepool_Files::shown($name) . '); links and special files are never imported');
                }
                $is_dir = $type === '5';
                if ($name === '') {
                    continue;
                }
                $top = explode('/', $name, 2)[0];
                if ($name === 'manifest.json' && !$is_dir) {
                    $manifest = json_decode($reader->contents(1048576), true);
                    if (!is_array($manifest)) {
                        throw new Clonepool_Refusal('clonepool_bad_archive', 'manifest.json is not a JSON object');
                    }
                } elseif ($name === 'export-error.json') {
                    $error = json_decode($reader->contents(65536), true);
                    throw new Clonepool_Refusal('clonepool_incomplete_archive', 'the archive comes from a failed export: ' . (is_array($error) ? (string) ($error['error'] ?? '') : ''));
                } elseif ($name === 'export-complete.json') {
                    continue; // checking an export's completeness is the reader's job
                } elseif (!$is_dir && ($name === 'database.sql' || preg_match('~^database/[^/]+\.sql$~', $name))) {
                    $sql[$name] = ['offset' => $e['offset'], 'size' => $e['size']];
                } elseif ($name === 'database' && $is_dir) {
                    continue;
                } elseif ($top === 'wp-content') {
                    if ($name === 'wp-content') {
                        continue;
                    }
                    $rel = substr($name, strlen('wp-content/'));
                    if ($is_dir) {
                        $dirs[$rel] = true;
                    } else {
                        unset($files[$rel]); // a later entry of the same name wins, in its archive position
                        $files[$rel] = ['offset' => $e['offset'], 'size' => $e['size'], 'mode' => $e['mode'], 'mtime' => $e['mtime']];
                    }
                } elseif ($top === 'core') {
                    $core++;
                } else {
                    $this->skip($name, 'not part of the archive layout (manifest.json, database*.sql, wp-content/, core/)');
                }
            }
        } catch (Clonepool_Tar_Exception $e) {
            throw new Clonepool_Refusal('clonepool_bad_archive', 'not a valid tar archive: ' . $e->getMessage());
        } finally {
            fclose($fh);
        }
        if ($core > 0) {
            $this->skip('core/', "$core WordPress core entries: an import never replaces this site's WordPress core");
        }

        // The database: every statement is classified now, so a refusal comes before any change.
        $tables = [];
        $created = [];
        $skipped_tables = [];
        $statements = 0;
        if ($this->opts['database'] && $sql !== []) {
            $source_prefix = is_array($manifest) && isset($manifest['table_prefix']) ? (string) $manifest['table_prefix'] : null;
            if ($source_prefix !== null && $source_prefix !== $this->prefix) {
                throw new Clonepool_Refusal('clonepool_prefix_mismatch', "the archive's tables use the prefix '$source_prefix' but this site uses '{$this->prefix}'; the migrator does not rename tables", 409);
            }
            $sql = self::order_sql($sql);
            try {
                foreach (Clonepool_Sql_Runner::statements($this->sql_chunks($spool, $sql), $this->limits['max_statement_bytes']) as $st) {
                    $statements++;
                    $c = $st['class'];
                    if ($c['kind'] === 'refuse') {
                        throw new Clonepool_Refusal('clonepool_unsafe_sql', 'the SQL holds a statement the migrator never runs (' . $c['reason'] . ')');
                    }
                    if ($c['kind'] === 'skip') {
                        $this->skip('SQL', $c['reason']);
                    } elseif ($c['kind'] === 'table') {
                        $reason = $this->table_exclusion($c['table']);
                        if ($reason === null) {
                            $tables[$c['table']] = true;
                            if ($c['verb'] === 'create') {
                                $created[$c['table']] = true;
                            }
                        } elseif (!isset($skipped_tables[$c['table']])) {
                            $skipped_tables[$c['table']] = true;
                            $this->skip('table ' . $c['table'], $reason);
                        }
                    }
                }
            } catch (Clonepool_Sql_Exception $e) {
                throw new Clonepool_Refusal('clonepool_bad_sql', 'the SQL dump cannot be read: ' . $e->getMessage());
            }
            foreach ((array) $this->opts['tables'] as $wanted) {
                if (!isset($tables[$wanted])) {
                    $this->warnings[] = "table $wanted was asked for but is not in the archive";
                }
            }
        } elseif ($this->opts['database'] && $this->opts['files'] === false) {
            throw new Clonepool_Refusal('clonepool_nothing_to_import', 'the archive holds no database dump (database.sql or database/*.sql)');
        }

        // Files under wp-content.
        $create_dirs = [];
        $writes = [];
        $unchanged = 0;
        if ($this->opts['files']) {
            foreach (array_keys($dirs) as $rel) {
                if (($why = Clonepool_Site::content_exclusion((string) $rel, true)) !== null) {
                    continue;
                }
                $info = Clonepool_Files::inspect((string) $rel, true);
                if ($info['action'] === 'create_dir') {
                    foreach ($info['missing_dirs'] as $d) {
                        $create_dirs[$d] = true;
                    }
                } elseif ($info['action'] === 'through_link') {
                    // Debian links themes and plugins into /usr/share/wordpress: the files below
                    // are compared one by one, the directory itself needs nothing.
                    if (!is_dir($info['path'])) {
                        $this->skip('wp-content/' . $rel . '/', $info['reason']);
                    }
                } elseif ($info['action'] !== 'exists') {
                    $this->skip('wp-content/' . $rel . '/', $info['reason'] ?? 'cannot be created');
                }
            }
            $excluded = [];
            foreach ($files as $rel => $f) {
                $rel = (string) $rel;
                $why = Clonepool_Site::content_exclusion($rel, true);
                if ($why !== null) {
                    $excluded[$why] = ($excluded[$why] ?? 0) + 1;
                    continue;
                }
                $info = Clonepool_Files::inspect($rel);
                $action = $info['action'];
                if ($action === 'create') {
                    foreach ($info['missing_dirs'] as $d) {
                        $create_dirs[$d] = true;
                    }
                    $writes[$rel] = $f + ['action' => 'create'];
                } elseif ($action === 'overwrite' || $action === 'through_link') {
                    $real = $action === 'overwrite' ? $info['path'] : realpath($info['path']);
                    if ($real !== false && is_file($real) && filesize($real) === $f['size']
                        && Clonepool_Files::file_md5($real) === $this->entry_md5($spool, $f)) {
                        $unchanged++;
                    } elseif ($action === 'overwrite') {
                        $writes[$rel] = $f + ['action' => 'overwrite'];
                    } else {
                        $this->skip('wp-content/' . $rel, $info['reason']);
                    }
                } else {
                    $this->skip('wp-content/' . $rel, $info['reason'] ?? 'cannot be written');
                }
            }
            foreach ($excluded as $why => $n) {
                $this->skip('wp-content/', "$n file(s) left alone: $why");
            }
        }
        return [
            'manifest' => $manifest,
            'sql' => $sql,
            'statements' => $statements,
            'tables' => array_keys($tables),
            'tables_created_by_dump' => array_keys($created),
            'create_dirs' => array_keys($create_dirs),
            'writes' => $writes,
            'unchanged' => $unchanged,
        ];
    }

    /** Why a table of the dump is not imported, or null when it is. */
    private function table_exclusion(string $table): ?string
    {
        if (strpos($table, $this->prefix) !== 0) {
            return "outside this site's table prefix '{$this->prefix}'";
        }
        if (!$this->opts['include_users'] && in_array($table, [$this->prefix . 'users', $this->prefix . 'usermeta'], true)) {
            return 'users and usermeta are kept unless include_users is set';
        }
        if ($this->opts['tables'] !== null && !in_array($table, $this->opts['tables'], true)) {
            return 'not among the requested tables';
        }
        return null;
    }

    /**
     * database.sql first, then database/*.sql parts in name order.
     *
     * @param array<string,array{offset:int,size:int}> $sql
     * @return array<string,array{offset:int,size:int}>
     */
    private static function order_sql(array $sql): array
    {
        uksort($sql, static function (string $a, string $b): int {
            if ($a === 'database.sql' || $b === 'database.sql') {
                return $a === 'database.sql' ? -1 : 1;
            }
            return strcmp($a, $b);
        });
        return $sql;
    }

    /**
     * @param array<string,array{offset:int,size:int}> $sql
     * @return Generator<int,string>
     */
    private function sql_chunks(string $spool, array $sql): Generator
    {
        foreach ($sql as $entry) {
            yield from self::entry_chunks($spool, $entry['offset'], $entry['size']);
            yield "\n";
        }
    }

    /** @return Generator<int,string> */
    private static function entry_chunks(string $spool, int $offset, int $size): Generator
    {
        $fh = fopen($spool, 'rb');
        try {
            if (fseek($fh, $offset) !== 0) {
                throw new RuntimeException('cannot read the received archive');
            }
            $left = $size;
            while ($left > 0) {
                $chunk = fread($fh, min(self::CHUNK, $left));
                if ($chunk === false || $chunk === '') {
                    throw new RuntimeException('the received archive is shorter than its headers say');
                }
                $left -= strlen($chunk);
                yield $chunk;
            }
        } finally {
            fclose($fh);
        }
    }

    /** @param array{offset:int,size:int} $f */
    private function entry_md5(string $spool, array $f): string
    {
        $ctx = hash_init('md5');
        foreach (self::entry_chunks($spool, $f['offset'], $f['size']) as $chunk) {
            hash_update($ctx, $chunk);
        }
        return hash_final($ctx);
    }

    /**
     * Saves what the import will replace: the affected tables that exist (database.sql), the
     * files it overwrites (files.tar); records the tables and files it will create.
     */
    private function backup(array $plan): string
    {
        global $wpdb;
        $id = Clonepool_Backups::new_id();
        $dir = Clonepool_Backups::create($id);
        $meta = [
            'backup_id' => $id,
            'created_at' => gmdate('c'),
            'created_at_us' => (int) (microtime(true) * 1000000),
            'status' => 'creating',
            'plugin_version' => CLONEPOOL_MIGRATOR_VERSION,
            'source' => is_array($plan['manifest']) ? ($plan['manifest']['siteurl'] ?? null) : null,
            'options' => $this->opts,
            'site_url' => get_option('siteurl'),
            'tables' => [],
            'created_tables' => [],
            'files_backed_up' => 0,
            'created_files' => [],
            'created_dirs' => [],
        ];
        Clonepool_Backups::save($id, $meta);

        $runner = new Clonepool_Sql_Runner();
        $existing = array_flip($runner->column('SHOW TABLES'));
        $backup_tables = [];
        foreach ($plan['tables'] as $t) {
            if (isset($existing[$t])) {
                $backup_tables[] = $t;
            } else {
                $meta['created_tables'][] = $t;
            }
        }
        if ($backup_tables !== []) {
            $out = fopen("$dir/database.sql", 'xb');
            $dumper = new Clonepool_Sql_Dumper($wpdb, static function (string $sql) use ($out): void {
                if (fwrite($out, $sql) !== strlen($sql)) {
                    throw new RuntimeException('cannot write the database backup (disk full?)');
                }
            });
            $estimates = Clonepool_Sql_Dumper::table_estimates($wpdb);
            $previous = $wpdb->suppress_errors(true);
            try {
                $dumper->begin();
                $dumper->header('clonepool-migrator backup ' . $id . ' of ' . get_option('siteurl'));
                foreach ($backup_tables as $t) {
                    $dumper->dump_table($t, (int) ($estimates[$t]['avg_row'] ?? 0));
                }
                $dumper->footer();
                $dumper->end();
            } finally {
                $wpdb->suppress_errors($previous);
                fclose($out);
            }
        }
        $meta['tables'] = $backup_tables;

        $overwrites = array_filter($plan['writes'], static function (array $w): bool {
            return $w['action'] === 'overwrite';
        });
        if ($overwrites !== []) {
            $out = fopen("$dir/files.tar", 'xb');
            $tar = new Clonepool_Tar_Writer(static function (string $bytes) use ($out): void {
                if (fwrite($out, $bytes) !== strlen($bytes)) {
                    throw new RuntimeException('cannot write the files backup (disk full?)');
                }
            });
            foreach (array_keys($overwrites) as $rel) {
                $path = Clonepool_Files::target((string) $rel)['path'];
                $fh = fopen($path, 'rb');
                if ($fh === false) {
                    fclose($out);
                    throw new RuntimeException("cannot read $path to back it up");
                }
                $st = fstat($fh);
                $tar->add_stream('wp-content/' . $rel, $fh, (int) $st['size'], $st['mode'] & 0777, (int) $st['mtime']);
                fclose($fh);
                $meta['files_backed_up']++;
            }
            $tar->finish();
            fclose($out);
        }
        foreach ($plan['writes'] as $rel => $w) {
            if ($w['action'] === 'create') {
                $meta['created_files'][] = (string) $rel;
            }
        }
        $meta['created_dirs'] = $plan['create_dirs'];
        $meta['status'] = 'ready';
        Clonepool_Backups::save($id, $meta);
        return $id;
    }

    private function import(array $plan, string $spool, string $backup_id): void
    {
        try {
            $runner = new Clonepool_Sql_Runner();
            $before = $this->site_urls($runner);
            if ($plan['tables'] !== []) {
                $runner->begin();
                try {
                    foreach (Clonepool_Sql_Runner::statements($this->sql_chunks($spool, $plan['sql']), $this->limits['max_statement_bytes']) as $st) {
                        $c = $st['class'];
                        if ($c['kind'] === 'set') {
                            $error = $runner->try_exec($st['sql']);
                            if ($error !== null) {
                                $this->warnings[] = "session setting skipped: $error";
                            }
                        } elseif ($c['kind'] === 'table' && $this->table_exclusion($c['table']) === null) {
                            $runner->exec($st['sql']);
                        }
                    }
                } finally {
                    $runner->end();
                }
            }
            foreach ($plan['create_dirs'] as $rel) {
                Clonepool_Files::make_dir(Clonepool_Files::target($rel)['path']);
            }
            foreach ($plan['writes'] as $rel => $w) {
                Clonepool_Files::write(Clonepool_Files::target((string) $rel)['path'], self::entry_chunks($spool, $w['offset'], $w['size']), $w['mode'], $w['mtime']);
            }
            if (in_array($this->prefix . 'options', $plan['tables'], true)) {
                $this->after_options_import($runner, $before);
            }
            wp_cache_flush();
        } catch (Throwable $e) {
            $data = ['backup_id' => $backup_id, 'rolled_back' => false];
            try {
                self::restore($backup_id, Clonepool_Backups::load($backup_id) ?? []);
                $data['rolled_back'] = true;
            } catch (Throwable $rollback_error) {
                $data['rollback_error'] = $rollback_error->getMessage();
            }
            $meta = Clonepool_Backups::load($backup_id) ?? [];
            $meta['status'] = $data['rolled_back'] ? 'failed_rolled_back' : 'failed';
            $meta['error'] = $e->getMessage();
            Clonepool_Backups::save($backup_id, $meta);
            throw new Clonepool_Import_Failed(
                'the import failed: ' . $e->getMessage() . ($data['rolled_back']
                    ? '; the site was restored from backup ' . $backup_id
                    : '; restoring backup ' . $backup_id . ' failed too: ' . ($data['rollback_error'] ?? '')),
                $data
            );
        }
    }

    /** @return array{siteurl:?string,home:?string} */
    private function site_urls(Clonepool_Sql_Runner $runner): array
    {
        $out = ['siteurl' => null, 'home' => null];
        foreach (['siteurl', 'home'] as $name) {
            try {
                $values = $runner->column('SELECT option_value FROM ' . Clonepool_Sql_Dumper::quote_ident($this->prefix . 'options') . ' WHERE option_name = ' . $runner->quote($name));
                $out[$name] = $values[0] ?? null;
            } catch (RuntimeException $e) {
                $out[$name] = null;
            }
        }
        return $out;
    }

    /**
     * After the options table was replaced: keep this site's own address (unless told not to)
     * and keep the migrator active, so the import can still be rolled back over REST.
     *
     * @param array{siteurl:?string,home:?string} $before
     */
    private function after_options_import(Clonepool_Sql_Runner $runner, array $before): void
    {
        $options = Clonepool_Sql_Dumper::quote_ident($this->prefix . 'options');
        $after = $this->site_urls($runner);
        foreach (['siteurl', 'home'] as $name) {
            if ($before[$name] === null || $after[$name] === $before[$name]) {
                continue;
            }
            if ($this->opts['keep_site_url']) {
                $runner->exec("UPDATE $options SET option_value = " . $runner->quote($before[$name]) . ' WHERE option_name = ' . $runner->quote($name));
                $this->warnings[] = "the archive's $name (" . $after[$name] . ") differs from this site's; kept this site's (" . $before[$name] . '). Rewrite URLs before importing (clonepoolctl sql-rewrite)';
            } else {
                $this->warnings[] = "$name changed from " . $before[$name] . ' to ' . $after[$name];
            }
        }
        self::keep_plugin_active($runner, $this->prefix);
    }

    public static function keep_plugin_active(Clonepool_Sql_Runner $runner, string $prefix): bool
    {
        $options = Clonepool_Sql_Dumper::quote_ident($prefix . 'options');
        $values = $runner->column("SELECT option_value FROM $options WHERE option_name = 'active_plugins'");
        $active = isset($values[0]) ? @unserialize($values[0], ['allowed_classes' => false]) : [];
        if (!is_array($active)) {
            $active = [];
        }
        $me = plugin_basename(CLONEPOOL_MIGRATOR_FILE);
        if (in_array($me, $active, true)) {
            return false;
        }
        $active[] = $me;
        sort($active);
        $value = $runner->quote(serialize(array_values($active)));
        if ($values === []) {
            $runner->exec("INSERT INTO $options (option_name, option_value, autoload) VALUES ('active_plugins', $value, 'yes')");
        } else {
            $runner->exec("UPDATE $options SET option_value = $value WHERE option_name = 'active_plugins'");
        }
        return true;
    }

    /** @return array<string,mixed> */
    private function report(array $plan, ?string $backup_id, int $bytes, float $started): array
    {
        $created = 0;
        foreach ($plan['writes'] as $w) {
            if ($w['action'] === 'create') {
                $created++;
            }
        }
        $this->seconds['total'] = round(microtime(true) - $started, 3);
        return [
            'backup_id' => $backup_id,
            'source' => is_array($plan['manifest']) ? ($plan['manifest']['siteurl'] ?? null) : null,
            'archive_bytes' => $bytes,
            'tables_imported' => $plan['tables'],
            'statements' => $plan['statements'],
            'files_written' => count($plan['writes']),
            'files_created' => $created,
            'files_unchanged' => $plan['unchanged'],
            'directories_created' => count($plan['create_dirs']),
            'skipped_count' => $this->skipped_count,
            'skipped' => $this->skipped,
            'warnings' => $this->warnings,
            'site_url' => get_option('siteurl'),
            'seconds' => $this->seconds,
            'memory_peak_bytes' => memory_get_peak_usage(true),
        ];
    }

    private function skip(string $item, string $reason): void
    {
        $this->skipped_count++;
        if (count($this->skipped) < self::MAX_LISTED) {
            $this->skipped[] = ['item' => $item, 'reason' => $reason];
        }
    }

    /**
     * POST rollback: puts back what backup $id saved.
     *
     * @return array<string,mixed>
     */
    public static function rollback(string $id): array
    {
        if (is_multisite()) {
            throw new Clonepool_Refusal('clonepool_multisite', 'multisite networks are not supported by the migrator', 501);
        }
        $dir = Clonepool_Backups::path($id);
        $lock = Clonepool_Backups::lock();
        try {
            $meta = Clonepool_Backups::load($id);
            if ($meta === null || !is_dir($dir)) {
                throw new Clonepool_Refusal('clonepool_no_such_backup', "there is no backup $id on this site", 404);
            }
            if (($meta['status'] ?? '') === 'creating') {
                throw new Clonepool_Refusal('clonepool_backup_incomplete', "backup $id was never completed; it cannot be restored", 409);
            }
            ignore_user_abort(true);
            if (function_exists('set_time_limit')) {
                @set_time_limit(0);
            }
            $report = self::restore($id, $meta);
            $meta['status'] = 'rolled_back';
            $meta['rolled_back_at'] = gmdate('c');
            Clonepool_Backups::save($id, $meta);
            return $report;
        } finally {
            Clonepool_Backups::unlock($lock);
        }
    }

    /**
     * Restores backup $id: drops the tables the import created, replays database.sql, puts back
     * files.tar and removes the files and directories the import created.
     *
     * @param array<string,mixed> $meta
     * @return array<string,mixed>
     */
    private static function restore(string $id, array $meta): array
    {
        global $wpdb;
        $started = microtime(true);
        $dir = Clonepool_Backups::path($id);
        $prefix = $wpdb->base_prefix;
        $warnings = [];
        $runner = new Clonepool_Sql_Runner();
        $dropped = [];
        $runner->begin();
        try {
            foreach ((array) ($meta['created_tables'] ?? []) as $t) {
                if (is_string($t) && strpos($t, $prefix) === 0) {
                    $runner->exec('DROP TABLE IF EXISTS ' . Clonepool_Sql_Dumper::quote_ident($t));
                    $dropped[] = $t;
                }
            }
            if (is_file("$dir/database.sql")) {
                foreach (Clonepool_Sql_Runner::statements(self::file_chunks("$dir/database.sql"), Clonepool_Site::limits()['max_statement_bytes']) as $st) {
                    $kind = $st['class']['kind'];
                    if ($kind === 'table' && strpos($st['class']['table'], $prefix) === 0) {
                        $runner->exec($st['sql']);
                    } elseif ($kind === 'set') {
                        $runner->try_exec($st['sql']);
                    } elseif ($kind === 'refuse') {
                        throw new RuntimeException('the backup holds an unexpected statement: ' . $st['class']['reason']);
                    }
                }
            }
        } finally {
            $runner->end();
        }

        $restored = 0;
        if (is_file("$dir/files.tar")) {
            $fh = fopen("$dir/files.tar", 'rb');
            $reader = new Clonepool_Tar_Reader($fh);
            try {
                while (($e = $reader->next()) !== null) {
                    $name = Clonepool_Files::normalize_name($e['name'], 4096);
                    if ($e['type'] !== '0' || strpos($name, 'wp-content/') !== 0) {
                        continue;
                    }
                    $rel = substr($name, strlen('wp-content/'));
                    $info = Clonepool_Files::inspect($rel);
                    if ($info['action'] === 'create') {
                        foreach ($info['missing_dirs'] as $d) {
                            Clonepool_Files::make_dir(Clonepool_Files::target($d)['path']);
                        }
                    } elseif ($info['action'] !== 'overwrite') {
                        $warnings[] = "wp-content/$rel not restored: " . ($info['reason'] ?? $info['action']);
                        continue;
                    }
                    Clonepool_Files::write($info['path'], $reader->chunks(), $e['mode'], $e['mtime']);
                    $restored++;
                }
            } finally {
                fclose($fh);
            }
        }
        $removed = 0;
        foreach ((array) ($meta['created_files'] ?? []) as $rel) {
            $rel = Clonepool_Files::normalize_name((string) $rel, 4096);
            $info = Clonepool_Files::inspect($rel);
            if ($info['action'] === 'overwrite' && @unlink($info['path'])) {
                $removed++;
            }
        }
        $dirs_removed = 0;
        foreach (array_reverse((array) ($meta['created_dirs'] ?? [])) as $rel) {
            $rel = Clonepool_Files::normalize_name((string) $rel, 4096);
            $info = Clonepool_Files::inspect($rel, true);
            if ($info['action'] === 'exists' && @rmdir($info['path'])) {
                $dirs_removed++;
            }
        }
        wp_cache_flush();
        try {
            self::keep_plugin_active($runner, $prefix);
        } catch (RuntimeException $e) {
            $warnings[] = 'could not check that the migrator stays active: ' . $e->getMessage();
        }
        wp_cache_flush();
        return [
            'backup_id' => $id,
            'tables_restored' => array_values((array) ($meta['tables'] ?? [])),
            'tables_dropped' => $dropped,
            'files_restored' => $restored,
            'files_removed' => $removed,
            'directories_removed' => $dirs_removed,
            'warnings' => $warnings,
            'seconds' => round(microtime(true) - $started, 3),
        ];
    }

    /** @return Generator<int,string> */
    private static function file_chunks(string $path): Generator
    {
        $fh = fopen($path, 'rb');
        try {
            while (!feof($fh)) {
                $chunk = fread($fh, self::CHUNK);
                if ($chunk === false || $chunk === '') {
                    break;
                }
                yield $chunk;
            }
        } finally {
            fclose($fh);
        }
    }
}
