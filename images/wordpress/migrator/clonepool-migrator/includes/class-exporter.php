<?php
/**
 * GET clonepool/v1/export: streams this site as a tar (or tar.gz) archive.
 *
 * Layout: manifest.json, database/000001.sql … (the SQL dump in parts of whole statements),
 * wp-content/… (uploads, themes, plugins, mu-plugins, languages; no caches or backups),
 * core/… (wp-admin, wp-includes and the root PHP files except wp-config.php), and last
 * export-complete.json with exact counts. An archive without export-complete.json and the tar
 * end-of-archive marker is incomplete (the export failed; export-error.json says why when it can).
 *
 * @package clonepool-migrator
 */

defined('ABSPATH') || exit;

final class Clonepool_Exporter
{
    /** The SQL dump is cut into tar entries of about this size, at statement boundaries. */
    private const PART_BYTES = 8388608;
    private const FLUSH_BYTES = 262144;
    private const MAX_LISTED_SKIPS = 1000;

    /** @var array{database:bool,files:bool,core:bool,gzip:bool} */
    private array $opts;
    private ?Clonepool_Tar_Writer $tar = null;
    /** @var resource|DeflateContext|null */
    private $deflate = null;
    private int $sent = 0;
    private int $since_flush = 0;
    private string $part = '';
    private int $parts = 0;
    private int $db_bytes = 0;
    /** @var list<array{path:string,reason:string}> */
    private array $skipped = [];
    private int $skipped_count = 0;
    /** @var list<string> */
    private array $warnings = [];
    private int $files = 0;
    private int $file_bytes = 0;

    /** @param array{database:bool,files:bool,core:bool,gzip:bool} $opts */
    public function __construct(array $opts)
    {
        $this->opts = $opts;
    }

    /** Checks made before the first byte is sent, so failures are still proper JSON errors. */
    public function preflight(): ?WP_Error
    {
        if (is_multisite()) {
            return new WP_Error('clonepool_multisite', 'multisite networks are not supported by the migrator', ['status' => 501]);
        }
        return null;
    }

    /** Sends the headers and the whole archive. */
    public function stream(): void
    {
        $started = microtime(true);
        $this->prepare_output();
        try {
            $this->write_archive($started);
        } catch (Throwable $e) {
            error_log('clonepool-migrator: export failed: ' . $e->getMessage());
            if ($this->tar !== null && !connection_aborted()) {
                // No end-of-archive marker after this: readers see an incomplete archive.
                $this->tar->add_string('export-error.json', (string) wp_json_encode([
                    'error' => $e->getMessage(),
                    'at' => gmdate('c'),
                ], JSON_INVALID_UTF8_SUBSTITUTE));
            }
        }
        $this->close_output();
    }

    private function prepare_output(): void
    {
        if (function_exists('set_time_limit')) {
            @set_time_limit(0);
        }
        @ini_set('display_errors', '0');
        @ini_set('zlib.output_compression', '0');
        while (ob_get_level() > 0) {
            @ob_end_clean();
        }
        $host = (string) preg_replace('/[^A-Za-z0-9.-]+/', '-', (string) wp_parse_url(home_url(), PHP_URL_HOST));
        $name = 'clonepool-export-' . $host . '-' . gmdate('Ymd\THis\Z') . ($this->opts['gzip'] ? '.tar.gz' : '.tar');
        status_header(200);
        header_remove('Content-Length');
        header('Content-Type: ' . ($this->opts['gzip'] ? 'application/gzip' : 'application/x-tar'));
        header('Content-Disposition: attachment; filename="' . $name . '"');
        header('Cache-Control: no-store');
        header('X-Content-Type-Options: nosniff');
        header('X-Accel-Buffering: no');
        if ($this->opts['gzip']) {
            $this->deflate = deflate_init(ZLIB_ENCODING_GZIP, ['level' => 6]);
        }
        $this->tar = new Clonepool_Tar_Writer(function (string $bytes): void {
            $this->send($bytes);
        });
    }

    private function send(string $bytes): void
    {
        if ($this->deflate !== null) {
            $bytes = (string) deflate_add($this->deflate, $bytes, ZLIB_NO_FLUSH);
            if ($bytes === '') {
                return;
            }
        }
        echo $bytes;
        $this->sent += strlen($bytes);
        $this->since_flush += strlen($bytes);
        if ($this->since_flush >= self::FLUSH_BYTES) {
            flush();
            $this->since_flush = 0;
            if (connection_aborted()) {
                throw new RuntimeException('the client closed the connection');
            }
        }
    }

    private function close_output(): void
    {
        if ($this->deflate !== null) {
            echo (string) deflate_add($this->deflate, '', ZLIB_FINISH);
            $this->deflate = null;
        }
        flush();
    }

    private function write_archive(float $started): void
    {
        global $wpdb;
        $tar = $this->tar;
        $content = Clonepool_Site::content_dir();
        $core = Clonepool_Site::core_dir();
        $roots = Clonepool_Site::link_roots();
        $custom_uploads = Clonepool_Site::custom_uploads_dir();

        // Measure first (stat only) so the manifest can announce sizes.
        $tables = Clonepool_Sql_Dumper::site_tables($wpdb);
        $estimates = Clonepool_Sql_Dumper::table_estimates($wpdb);
        $content_count = ['files' => 0, 'bytes' => 0, 'skipped' => 0];
        $core_count = ['files' => 0, 'bytes' => 0, 'skipped' => 0];
        if ($this->opts['files']) {
            $this->walk_content($content, $custom_uploads, $roots, $this->counter($content_count), $this->skip_counter($content_count));
        }
        if ($this->opts['core']) {
            $this->walk_core($core, $roots, $this->counter($core_count), $this->skip_counter($core_count));
        }
        $db_estimate = 0;
        $table_list = [];
        foreach ($tables['tables'] as $t) {
            $db_estimate += $estimates[$t]['bytes'] ?? 0;
            $table_list[] = ['name' => $t, 'rows_estimate' => $estimates[$t]['rows'] ?? 0, 'bytes_estimate' => $estimates[$t]['bytes'] ?? 0];
        }
        $manifest = [
            'format' => 'clonepool-migrator-archive',
            'format_version' => 1,
            'plugin_version' => CLONEPOOL_MIGRATOR_VERSION,
            'created_at' => gmdate('c'),
            'wordpress_version' => $GLOBALS['wp_version'],
            'php_version' => PHP_VERSION,
            'database_server' => method_exists($wpdb, 'db_server_info') ? (string) $wpdb->db_server_info() : (string) $wpdb->db_version(),
            'db_charset' => (string) $wpdb->charset,
            'db_collate' => (string) $wpdb->collate,
            'table_prefix' => $wpdb->base_prefix,
            'siteurl' => (string) get_option('siteurl'),
            'home' => (string) get_option('home'),
            'multisite' => false,
            'active_plugins' => array_values((array) get_option('active_plugins', [])),
            'stylesheet' => (string) get_option('stylesheet'),
            'template' => (string) get_option('template'),
            'source_paths' => [
                'abspath' => $core,
                'wp_content_dir' => $content,
                'uploads_dir' => $custom_uploads ?? $content . '/uploads',
            ],
            'contents' => [
                'database' => $this->opts['database'],
                'wp_content' => $this->opts['files'],
                'core' => $this->opts['core'],
                // Core files behind links that leave the site's directories (Debian links some
                // libraries into /usr/share) are not in the archive.
                'core_complete' => $this->opts['core'] && $core_count['skipped'] === 0,
            ],
            'layout' => [
                'database' => 'database/NNNNNN.sql: one dump in parts, whole statements each, to be run in name order',
                'wp_content' => 'wp-content/',
                'core' => 'core/',
                'complete_marker' => 'export-complete.json',
            ],
            'tables' => $this->opts['database'] ? $table_list : [],
            'skipped_tables' => $tables['skipped'],
            'excluded' => [
                'wp_content_dirs' => Clonepool_Site::EXCLUDED_DIRS,
                'wp_content_files' => Clonepool_Site::EXCLUDED_FILES,
                'patterns' => ['mu-plugins/clonepool-*', 'core: wp-config*.php, wp-content/ of ABSPATH'],
            ],
            'sizes' => [
                'database_bytes_estimate' => $this->opts['database'] ? $db_estimate : 0,
                'wp_content_files' => $content_count['files'],
                'wp_content_bytes' => $content_count['bytes'],
                'core_files' => $core_count['files'],
                'core_bytes' => $core_count['bytes'],
            ],
        ];
        $tar->add_string('manifest.json', (string) wp_json_encode($manifest, JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE) . "\n");

        $rows = [];
        $db_started = microtime(true);
        if ($this->opts['database']) {
            $tar->add_directory('database', 0755);
            $dumper = new Clonepool_Sql_Dumper($wpdb, function (string $sql): void {
                $this->part .= $sql;
                if (strlen($this->part) >= self::PART_BYTES) {
                    $this->flush_part();
                }
            });
            $previous = $wpdb->suppress_errors(true);
            try {
                $dumper->begin();
                $dumper->header('clonepool-migrator ' . CLONEPOOL_MIGRATOR_VERSION . ' dump of ' . get_option('siteurl') . ' (table prefix ' . $wpdb->base_prefix . ') at ' . gmdate('c'));
                foreach ($tables['tables'] as $t) {
                    $rows[$t] = $dumper->dump_table($t, (int) ($estimates[$t]['avg_row'] ?? 0))['rows'];
                }
                $dumper->footer();
                $dumper->end();
            } finally {
                $wpdb->suppress_errors($previous);
            }
            $this->flush_part();
        }
        $db_seconds = microtime(true) - $db_started;

        $files_started = microtime(true);
        if ($this->opts['files']) {
            $tar->add_directory('wp-content', 0755);
            $this->walk_content($content, $custom_uploads, $roots, [$this, 'add_entry'], [$this, 'skip']);
        }
        if ($this->opts['core']) {
            $tar->add_directory('core', 0755);
            $this->walk_core($core, $roots, [$this, 'add_entry'], [$this, 'skip']);
        }
        $complete = [
            'complete' => true,
            'tables' => $rows,
            'database_parts' => $this->parts,
            'database_bytes' => $this->db_bytes,
            'files' => $this->files,
            'file_bytes' => $this->file_bytes,
            'skipped_count' => $this->skipped_count,
            'skipped' => $this->skipped,
            'warnings' => $this->warnings,
            'seconds' => [
                'database' => round($db_seconds, 3),
                'files' => round(microtime(true) - $files_started, 3),
                'total' => round(microtime(true) - $started, 3),
            ],
        ];
        $tar->add_string('export-complete.json', (string) wp_json_encode($complete, JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE) . "\n");
        $tar->finish();
    }

    private function flush_part(): void
    {
        if ($this->part === '') {
            return;
        }
        $this->parts++;
        $this->db_bytes += strlen($this->part);
        $this->tar->add_string(sprintf('database/%06d.sql', $this->parts), $this->part);
        $this->part = '';
    }

    /** @internal walk callback */
    public function add_entry(string $type, string $arc, string $path, array $st): void
    {
        if ($type === 'dir') {
            $this->tar->add_directory($arc, $st['mode'] & 0777, (int) $st['mtime']);
            return;
        }
        $handle = @fopen($path, 'rb');
        if ($handle === false) {
            $this->skip($arc, 'file not readable');
            return;
        }
        $fst = fstat($handle);
        $size = (int) ($fst['size'] ?? $st['size']);
        if (!$this->tar->add_stream($arc, $handle, $size, $st['mode'] & 0777, (int) $st['mtime'])) {
            $this->warnings[] = "$arc changed while it was exported";
        }
        fclose($handle);
        $this->files++;
        $this->file_bytes += $size;
    }

    /** @internal walk callback */
    public function skip(string $arc, string $reason): void
    {
        $this->skipped_count++;
        if (count($this->skipped) < self::MAX_LISTED_SKIPS) {
            $this->skipped[] = ['path' => $arc, 'reason' => $reason];
        }
    }

    /** @param array{files:int,bytes:int,skipped:int} $count */
    private function counter(array &$count): callable
    {
        return static function (string $type, string $arc, string $path, array $st) use (&$count): void {
            if ($type === 'file') {
                $count['files']++;
                $count['bytes'] += (int) $st['size'];
            }
        };
    }

    /** @param array{files:int,bytes:int,skipped:int} $count */
    private function skip_counter(array &$count): callable
    {
        return static function () use (&$count): void {
            $count['skipped']++;
        };
    }

    /** @param list<string> $roots */
    private function walk_content(string $content, ?string $custom_uploads, array $roots, callable $visit, callable $skip): void
    {
        $filter = static function (string $arc) use ($custom_uploads): ?string {
            $rel = substr($arc, strlen('wp-content/'));
            if ($custom_uploads !== null && ($rel === 'uploads' || strpos($rel, 'uploads/') === 0)) {
                return 'exported from the custom uploads directory';
            }
            return Clonepool_Site::content_exclusion($rel, false);
        };
        Clonepool_Site::walk($content, 'wp-content', $roots, $visit, $skip, $filter);
        if ($custom_uploads !== null) {
            $st = @stat($custom_uploads);
            if ($st !== false) {
                $visit('dir', 'wp-content/uploads', $custom_uploads, $st);
                Clonepool_Site::walk($custom_uploads, 'wp-content/uploads', $roots, $visit, $skip, static function (): ?string {
                    return null;
                });
            }
        }
    }

    /** @param list<string> $roots */
    private function walk_core(string $core, array $roots, callable $visit, callable $skip): void
    {
        $filter = static function (string $arc): ?string {
            $rel = substr($arc, strlen('core/'));
            if (strpos($rel, '/') !== false) {
                return null;
            }
            if ($rel === 'wp-admin' || $rel === 'wp-includes') {
                return null;
            }
            if (substr($rel, -4) === '.php' && strpos($rel, 'wp-config') !== 0) {
                return null;
            }
            return 'not part of WordPress core (or wp-config)';
        };
        Clonepool_Site::walk($core, 'core', $roots, $visit, $skip, $filter);
    }
}
