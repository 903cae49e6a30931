<?php
/*
 * clonepool: /usr/share/wordpress/wp-config.php (Debian's original is diverted to
 * wp-config.php.distrib). Debian picks /etc/wordpress/config-<host>.php by the Host header; a clone
 * answers to whatever Host its proxy sends, so this always reads /etc/wordpress/config-default.php,
 * written by clonepool-wp-config. The defaults below are Debian's.
 */
$debian_file = '/etc/wordpress/config-default.php';
if (!is_readable($debian_file)) {
    if (PHP_SAPI !== 'cli') {
        header('HTTP/1.0 503 Service Unavailable');
        header('Retry-After: 1');
    }
    echo "This WordPress clone is not configured yet (no $debian_file; run clonepool-wp-config).\n";
    exit(1);
}
require_once($debian_file);
define('DEBIAN_FILE', $debian_file);

/* Switch off automatic updates (done by the image) */
if (!defined('wp_auto_update_core'))
    define('wp_auto_update_core', false);

if (!defined('ABSPATH'))
    define('ABSPATH', '/usr/share/wordpress/');
if (!defined('WP_AUTO_UPDATE_CORE'))
    define('WP_AUTO_UPDATE_CORE', false);
if (!defined('DB_NAME'))
    define('DB_NAME', 'wordpress');
if (!defined('DB_USER'))
    define('DB_USER', 'wordpress');
if (!defined('DB_HOST'))
    define('DB_HOST', '127.0.0.1:3306');
if (!defined('WP_CONTENT_DIR') && !defined('DONT_SET_WP_CONTENT_DIR'))
    define('WP_CONTENT_DIR', '/var/lib/wordpress/wp-content');

if (!isset($table_prefix)) {
    $table_prefix = 'wp_';
}

if (isset($_SERVER['HTTP_X_FORWARDED_PROTO']) && $_SERVER['HTTP_X_FORWARDED_PROTO'] == 'https')
    $_SERVER['HTTPS'] = 'on';

require_once(ABSPATH . 'wp-settings.php');
