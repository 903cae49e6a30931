<?php
/**
 * Backups the importer makes before it changes anything, in wp-content/clonepool-backups/<id>/:
 * backup.json (what was backed up and what the import created), database.sql (the affected
 * tables as they were), files.tar (the files the import overwrote). The directory refuses web
 * access (.htaccess) and has index.php files; backup ids are unguessable.
 *
 * @package clonepool-migrator
 */

defined('ABSPATH') || exit;

final class Clonepool_Backups
{
    private const ID_PATTERN = '/^\d{8}T\d{6}Z-[0-9a-f]{16}$/';
    private const HTACCESS = "# clonepool-migrator: backups are never served over HTTP.\n"
        . "<IfModule mod_authz_core.c>\nRequire all denied\n</IfModule>\n"
        . "<IfModule !mod_authz_core.c>\nOrder allow,deny\nDeny from all\n</IfModule>\n";
    private const INDEX = "<?php\n// Silence is golden.\n";

    /** Creates the backups directory with its protections; returns its path. */
    public static function ensure_dir(): string
    {
        $dir = Clonepool_Site::backups_dir();
        if (is_link($dir)) {
            throw new RuntimeException("$dir is a symbolic link; refusing to use it");
        }
        if (!is_dir($dir) && !@mkdir($dir, 0750) && !is_dir($dir)) {
            throw new RuntimeException("cannot create $dir (is wp-content writable by the web server?)");
        }
        foreach (['.htaccess' => self::HTACCESS, 'index.php' => self::INDEX] as $file => $content) {
            $path = "$dir/$file";
            if (!is_file($path) || file_get_contents($path) !== $content) {
                if (@file_put_contents($path, $content) === false) {
                    throw new RuntimeException("cannot write $path");
                }
            }
        }
        return $dir;
    }

    /**
     * Takes the migrator's lock (one import or rollback at a time).
     *
     * @return resource
     * @throws Clonepool_Refusal when another import or rollback runs
     */
    public static function lock()
    {
        $dir = self::ensure_dir();
        $fh = @fopen("$dir/.lock", 'c');
        if ($fh === false) {
            throw new RuntimeException("cannot open $dir/.lock");
        }
        if (!flock($fh, LOCK_EX | LOCK_NB)) {
            fclose($fh);
            throw new Clonepool_Refusal('clonepool_busy', 'another import or rollback is running on this site; try again when it has finished', 409);
        }
        return $fh;
    }

    /** @param resource $fh */
    public static function unlock($fh): void
    {
        flock($fh, LOCK_UN);
        fclose($fh);
    }

    public static function new_id(): string
    {
        return gmdate('Ymd\THis\Z') . '-' . bin2hex(random_bytes(8));
    }

    public static function valid_id(string $id): bool
    {
        return (bool) preg_match(self::ID_PATTERN, $id);
    }

    public static function path(string $id): string
    {
        if (!self::valid_id($id)) {
            throw new Clonepool_Refusal('clonepool_bad_backup_id', 'backup_id has the wrong format', 400);
        }
        return Clonepool_Site::backups_dir() . '/' . $id;
    }

    public static function create(string $id): string
    {
        $dir = self::path($id);
        if (!@mkdir($dir, 0750)) {
            throw new RuntimeException("cannot create $dir");
        }
        file_put_contents("$dir/index.php", self::INDEX);
        return $dir;
    }

    /** @return array<string,mixed>|null */
    public static function load(string $id): ?array
    {
        $file = self::path($id) . '/backup.json';
        if (!is_file($file)) {
            return null;
        }
        $meta = json_decode((string) file_get_contents($file), true);
        return is_array($meta) ? $meta : null;
    }

    /** @param array<string,mixed> $meta */
    public static function save(string $id, array $meta): void
    {
        $dir = self::path($id);
        $tmp = "$dir/.backup.json.tmp";
        $json = wp_json_encode($meta, JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE);
        if ($json === false || @file_put_contents($tmp, $json . "\n") === false || !@rename($tmp, "$dir/backup.json")) {
            throw new RuntimeException("cannot write $dir/backup.json");
        }
    }

    /**
     * Summaries of every backup, newest first.
     *
     * @return list<array<string,mixed>>
     */
    public static function all(): array
    {
        $dir = Clonepool_Site::backups_dir();
        $out = [];
        foreach ((array) @scandir($dir, SCANDIR_SORT_DESCENDING) as $name) {
            if (!is_string($name) || !self::valid_id($name)) {
                continue;
            }
            $meta = self::load($name);
            if ($meta === null) {
                continue;
            }
            $out[] = self::summary($meta, "$dir/$name") + ['_order' => (int) ($meta['created_at_us'] ?? 0)];
        }
        // Newest first; ids sort by second, the microsecond timestamp breaks ties.
        usort($out, static function (array $a, array $b): int {
            return [$b['_order'], $b['backup_id']] <=> [$a['_order'], $a['backup_id']];
        });
        return array_map(static function (array $b): array {
            unset($b['_order']);
            return $b;
        }, $out);
    }

    /** @param array<string,mixed> $meta */
    public static function summary(array $meta, string $dir): array
    {
        $bytes = 0;
        foreach (['database.sql', 'files.tar', 'backup.json'] as $f) {
            $bytes += is_file("$dir/$f") ? (int) filesize("$dir/$f") : 0;
        }
        return [
            'backup_id' => $meta['backup_id'] ?? basename($dir),
            'created_at' => $meta['created_at'] ?? null,
            'status' => $meta['status'] ?? 'unknown',
            'source' => $meta['source'] ?? null,
            'tables' => $meta['tables'] ?? [],
            'tables_created_by_import' => $meta['created_tables'] ?? [],
            'files_backed_up' => $meta['files_backed_up'] ?? 0,
            'files_created_by_import' => count($meta['created_files'] ?? []),
            'bytes' => $bytes,
            'rolled_back_at' => $meta['rolled_back_at'] ?? null,
        ];
    }

    public static function delete(string $id): bool
    {
        $dir = self::path($id);
        if (!is_dir($dir) || is_link($dir)) {
            return false;
        }
        foreach ((array) scandir($dir) as $name) {
            if ($name !== '.' && $name !== '..' && is_string($name)) {
                @unlink("$dir/$name");
            }
        }
        return @rmdir($dir);
    }
}
