<?php
/**
 * Where this site keeps its files, what the migrator leaves out of archives, and its limits.
 *
 * @package clonepool-migrator
 */

defined('ABSPATH') || exit;

final class Clonepool_Site
{
    /** Top-level wp-content directories never exported or imported: caches, temporary upgrade files, backups. */
    public const EXCLUDED_DIRS = [
        'cache', 'upgrade', 'upgrade-temp-backup', 'clonepool-backups', 'et-cache', 'litespeed', 'wflogs',
        'ai1wm-backups', 'updraft', 'backups-dup-lite', 'backups-dup-pro', 'wpvividbackups', 'backup-db',
    ];
    /** Top-level wp-content files never exported or imported: logs and cache drop-ins bound to services the clone lacks. */
    public const EXCLUDED_FILES = ['debug.log', 'object-cache.php', 'advanced-cache.php'];

    public const DEFAULT_LIMITS = [
        'max_archive_bytes' => 2147483648, // 2 GiB, uncompressed
        'max_entries' => 200000,
        'max_statement_bytes' => 67108864,
        'max_path_bytes' => 4096,
    ];

    /** Real path of wp-content, without trailing slash. */
    public static function content_dir(): string
    {
        return rtrim((string) (realpath(WP_CONTENT_DIR) ?: WP_CONTENT_DIR), '/');
    }

    /** Real path of the WordPress core directory (ABSPATH), without trailing slash. */
    public static function core_dir(): string
    {
        return rtrim((string) (realpath(ABSPATH) ?: ABSPATH), '/');
    }

    /** Uploads directory when it lies outside wp-content (UPLOADS / upload_path), else null. */
    public static function custom_uploads_dir(): ?string
    {
        $dirs = wp_upload_dir(null, false);
        $base = isset($dirs['basedir']) ? realpath($dirs['basedir']) : false;
        if ($base === false || self::within($base, [self::content_dir()])) {
            return null;
        }
        return rtrim($base, '/');
    }

    /**
     * Directories whose content may be exported through a symbolic link: the core directory,
     * wp-content and a custom uploads directory (filter `clonepool_migrator_link_roots` adds more).
     *
     * @return list<string>
     */
    public static function link_roots(): array
    {
        $roots = [self::core_dir(), self::content_dir()];
        $uploads = self::custom_uploads_dir();
        if ($uploads !== null) {
            $roots[] = $uploads;
        }
        $extra = apply_filters('clonepool_migrator_link_roots', []);
        foreach ((array) $extra as $dir) {
            $real = realpath((string) $dir);
            if ($real !== false && $real !== '/') {
                $roots[] = rtrim($real, '/');
            }
        }
        return array_values(array_unique($roots));
    }

    /** @param list<string> $roots */
    public static function within(string $path, array $roots): bool
    {
        foreach ($roots as $root) {
            if ($path === $root || strpos($path, $root . '/') === 0) {
                return true;
            }
        }
        return false;
    }

    public static function backups_dir(): string
    {
        return self::content_dir() . '/clonepool-backups';
    }

    /** This plugin's directory name under wp-content/plugins. */
    public static function plugin_slug(): string
    {
        return basename(dirname(CLONEPOOL_MIGRATOR_FILE));
    }

    /**
     * Why a path under wp-content (relative, no leading slash) stays out of archives, or null.
     * On import the plugin's own directory is left alone too: an import never replaces the code
     * that runs it.
     */
    public static function content_exclusion(string $rel, bool $for_import): ?string
    {
        $parts = explode('/', $rel);
        $top = $parts[0];
        if (in_array($top, self::EXCLUDED_DIRS, true)) {
            return $top === 'clonepool-backups' ? 'the migrator\'s own backups' : 'cache, temporary or backup directory';
        }
        if (count($parts) === 1 && in_array($top, self::EXCLUDED_FILES, true)) {
            return 'log file or cache drop-in';
        }
        if ($top === 'mu-plugins' && isset($parts[1]) && strpos($parts[1], 'clonepool-') === 0) {
            return 'clonepool\'s per-clone helper (mu-plugins/clonepool-*)';
        }
        if ($for_import && $top === 'plugins' && isset($parts[1]) && $parts[1] === self::plugin_slug()) {
            return 'the migrator plugin never overwrites itself';
        }
        return null;
    }

    /** @return array{max_archive_bytes:int,max_entries:int,max_statement_bytes:int,max_path_bytes:int} */
    public static function limits(): array
    {
        $limits = self::DEFAULT_LIMITS;
        if (defined('CLONEPOOL_MIGRATOR_MAX_BYTES')) {
            $limits['max_archive_bytes'] = (int) CLONEPOOL_MIGRATOR_MAX_BYTES;
        }
        $stored = get_option('clonepool_migrator_limits');
        if (is_array($stored)) {
            foreach ($stored as $key => $value) {
                if (isset($limits[$key]) && is_numeric($value) && (int) $value > 0) {
                    $limits[$key] = (int) $value;
                }
            }
        }
        $limits = (array) apply_filters('clonepool_migrator_limits', $limits);
        foreach (self::DEFAULT_LIMITS as $key => $default) {
            $limits[$key] = max(1, (int) ($limits[$key] ?? $default));
        }
        return $limits;
    }

    /**
     * Walks a directory tree in name order. Symbolic links are followed only when their target
     * lies inside one of $roots; links leaving them, dangling links, loops and special files are
     * reported through $skip instead.
     *
     * @param callable(string,string,string,array):void $visit  (type 'dir'|'file', archive name, path, stat)
     * @param callable(string,string):void              $skip   (archive name, reason)
     * @param callable(string):?string                  $filter (archive name) => exclusion reason or null
     * @param list<string>                              $roots
     * @param array<string,bool>                        $stack  real paths of the directories being walked
     */
    public static function walk(string $dir, string $arc, array $roots, callable $visit, callable $skip, callable $filter, array $stack = [], int $depth = 0): void
    {
        if ($depth > 64) {
            $skip($arc . '/', 'directory tree deeper than 64 levels');
            return;
        }
        $names = @scandir($dir, SCANDIR_SORT_ASCENDING);
        if ($names === false) {
            $skip($arc . '/', 'directory not readable');
            return;
        }
        $real_dir = realpath($dir);
        if ($real_dir !== false) {
            $stack[$real_dir] = true;
        }
        foreach ($names as $name) {
            if ($name === '.' || $name === '..') {
                continue;
            }
            $path = $dir . '/' . $name;
            $child = $arc . '/' . $name;
            if ($filter($child) !== null) {
                continue;
            }
            $lst = @lstat($path);
            if ($lst === false) {
                $skip($child, 'vanished or not readable');
                continue;
            }
            $is_link = ($lst['mode'] & 0170000) === 0120000;
            $st = $lst;
            if ($is_link) {
                $real = realpath($path);
                if ($real === false) {
                    $skip($child, 'dangling symbolic link');
                    continue;
                }
                if (!self::within($real, $roots)) {
                    $skip($child, 'symbolic link leaving the site\'s directories');
                    continue;
                }
                $st = @stat($path);
                if ($st === false) {
                    $skip($child, 'vanished or not readable');
                    continue;
                }
            }
            $type = $st['mode'] & 0170000;
            if ($type === 0040000) {
                $real = realpath($path);
                if ($real === false || isset($stack[$real])) {
                    $skip($child . '/', 'symbolic link loop');
                    continue;
                }
                $visit('dir', $child, $path, $st);
                self::walk($path, $child, $roots, $visit, $skip, $filter, $stack, $depth + 1);
            } elseif ($type === 0100000) {
                $visit('file', $child, $path, $st);
            } else {
                $skip($child, 'not a regular file (socket, FIFO or device)');
            }
        }
    }
}
