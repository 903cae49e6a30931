<?php
/**
 * The REST routes of namespace clonepool/v1. Every route needs the manage_options capability
 * (cookie + X-WP-Nonce, or an application password).
 *
 * @package clonepool-migrator
 */

defined('ABSPATH') || exit;

final class Clonepool_Rest
{
    public const ROUTE_NAMESPACE = 'clonepool/v1';

    public static function register(): void
    {
        $admin = [self::class, 'can_manage'];
        $bool = static function (bool $default, string $description): array {
            return ['type' => 'boolean', 'default' => $default, 'description' => $description];
        };
        register_rest_route(self::ROUTE_NAMESPACE, '/status', [
            'methods' => 'GET',
            'callback' => [self::class, 'status'],
            'permission_callback' => $admin,
        ]);
        register_rest_route(self::ROUTE_NAMESPACE, '/export', [
            'methods' => 'GET',
            'callback' => [self::class, 'export'],
            'permission_callback' => $admin,
            'args' => [
                'database' => $bool(true, 'include the SQL dump'),
                'files' => $bool(true, 'include wp-content'),
                'core' => $bool(true, 'include WordPress core files under core/'),
                'format' => ['type' => 'string', 'enum' => ['tar', 'tar.gz'], 'default' => 'tar'],
            ],
        ]);
        register_rest_route(self::ROUTE_NAMESPACE, '/import', [
            'methods' => ['POST', 'PUT'],
            'callback' => [self::class, 'import'],
            'permission_callback' => $admin,
            'args' => [
                'database' => $bool(true, 'import the SQL dump'),
                'files' => $bool(true, 'import wp-content files'),
                'tables' => ['type' => 'array', 'items' => ['type' => 'string', 'pattern' => '^[A-Za-z0-9_$]{1,64}$'], 'description' => 'only these tables (with or without the table prefix)'],
                'include_users' => $bool(false, 'also import the users and usermeta tables'),
                'dry_run' => $bool(false, 'check the archive and report what would change, change nothing'),
                'keep_site_url' => $bool(true, "keep this site's siteurl/home options when the archive's differ"),
            ],
        ]);
        register_rest_route(self::ROUTE_NAMESPACE, '/rollback', [
            'methods' => 'POST',
            'callback' => [self::class, 'rollback'],
            'permission_callback' => $admin,
            'args' => [
                'backup_id' => ['type' => 'string', 'required' => true],
            ],
        ]);
        register_rest_route(self::ROUTE_NAMESPACE, '/backups', [
            'methods' => 'GET',
            'callback' => [self::class, 'backups'],
            'permission_callback' => $admin,
        ]);
        register_rest_route(self::ROUTE_NAMESPACE, '/backups/(?P<backup_id>[0-9A-Za-z-]+)', [
            'methods' => 'DELETE',
            'callback' => [self::class, 'delete_backup'],
            'permission_callback' => $admin,
        ]);
    }

    /**
     * WordPress's REST server reads the whole request body into memory before dispatching. For
     * the import route the migrator streams the body itself, so the server is given an empty one.
     * Runs on rest_api_init, before the server builds its request.
     */
    public static function keep_import_body_streamable(): void
    {
        $route = isset($GLOBALS['wp']->query_vars['rest_route']) ? (string) $GLOBALS['wp']->query_vars['rest_route'] : '';
        if (untrailingslashit($route) === '/' . self::ROUTE_NAMESPACE . '/import') {
            $GLOBALS['HTTP_RAW_POST_DATA'] = '';
        }
    }

    /** @return true|WP_Error */
    public static function can_manage()
    {
        if (current_user_can('manage_options')) {
            return true;
        }
        return new WP_Error(
            'rest_forbidden',
            'the clonepool migrator needs a user with the manage_options capability (an administrator)',
            ['status' => rest_authorization_required_code()]
        );
    }

    public static function status(): WP_REST_Response
    {
        global $wpdb;
        return new WP_REST_Response([
            'plugin' => 'clonepool-migrator',
            'version' => CLONEPOOL_MIGRATOR_VERSION,
            'wordpress_version' => $GLOBALS['wp_version'],
            'php_version' => PHP_VERSION,
            'table_prefix' => $wpdb->base_prefix,
            'siteurl' => get_option('siteurl'),
            'home' => get_option('home'),
            'multisite' => is_multisite(),
            'formats' => ['export' => ['tar', 'tar.gz'], 'import' => ['tar', 'tar.gz']],
            'limits' => Clonepool_Site::limits() + [
                'post_max_size' => wp_convert_hr_to_bytes((string) ini_get('post_max_size')),
            ],
            'backups_dir_writable' => wp_is_writable(Clonepool_Site::content_dir()),
        ]);
    }

    /** @return WP_Error|never */
    public static function export(WP_REST_Request $request)
    {
        $exporter = new Clonepool_Exporter([
            'database' => (bool) $request['database'],
            'files' => (bool) $request['files'],
            'core' => (bool) $request['core'],
            'gzip' => $request['format'] === 'tar.gz',
        ]);
        $error = $exporter->preflight();
        if ($error !== null) {
            return $error;
        }
        $exporter->stream();
        exit;
    }

    /** @return WP_REST_Response|WP_Error */
    public static function import(WP_REST_Request $request)
    {
        $database = (bool) $request['database'];
        $files = (bool) $request['files'];
        if (!$database && !$files) {
            return new WP_Error('clonepool_nothing_to_import', 'database and files are both false: nothing to import', ['status' => 400]);
        }
        $tables = $request['tables'];
        try {
            $importer = new Clonepool_Importer([
                'database' => $database,
                'files' => $files,
                'tables' => is_array($tables) && $tables !== [] ? array_map('strval', $tables) : null,
                'include_users' => (bool) $request['include_users'],
                'dry_run' => (bool) $request['dry_run'],
                'keep_site_url' => (bool) $request['keep_site_url'],
            ]);
            return new WP_REST_Response($importer->run(), 200);
        } catch (Throwable $e) {
            return self::error($e);
        }
    }

    /** @return WP_REST_Response|WP_Error */
    public static function rollback(WP_REST_Request $request)
    {
        try {
            return new WP_REST_Response(Clonepool_Importer::rollback((string) $request['backup_id']), 200);
        } catch (Throwable $e) {
            return self::error($e);
        }
    }

    /** @return WP_REST_Response|WP_Error */
    public static function backups()
    {
        try {
            Clonepool_Backups::ensure_dir();
            return new WP_REST_Response(['backups' => Clonepool_Backups::all()], 200);
        } catch (Throwable $e) {
            return self::error($e);
        }
    }

    /** @return WP_REST_Response|WP_Error */
    public static function delete_backup(WP_REST_Request $request)
    {
        try {
            $id = (string) $request['backup_id'];
            $lock = Clonepool_Backups::lock();
            try {
                if (Clonepool_Backups::load($id) === null) {
                    return new WP_Error('clonepool_no_such_backup', "there is no backup $id on this site", ['status' => 404]);
                }
                Clonepool_Backups::delete($id);
            } finally {
                Clonepool_Backups::unlock($lock);
            }
            return new WP_REST_Response(['deleted' => $id], 200);
        } catch (Throwable $e) {
            return self::error($e);
        }
    }

    private static function error(Throwable $e): WP_Error
    {
        if ($e instanceof Clonepool_Refusal) {
            return new WP_Error($e->error_code, $e->getMessage(), ['status' => $e->status, 'changed' => false]);
        }
        if ($e instanceof Clonepool_Import_Failed) {
            return new WP_Error('clonepool_import_failed', $e->getMessage(), ['status' => 500, 'changed' => !$e->data['rolled_back']] + $e->data);
        }
        error_log('clonepool-migrator: ' . get_class($e) . ': ' . $e->getMessage());
        return new WP_Error('clonepool_error', $e->getMessage(), ['status' => 500]);
    }
}
