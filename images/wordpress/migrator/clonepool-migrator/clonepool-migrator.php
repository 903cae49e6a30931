<?php
/**
 * Plugin Name:       clonepool migrator
 * Description:       Streams this site (database, wp-content, WordPress core) to clonepool and imports changes back, backing up first. REST namespace clonepool/v1, administrators only.
 * Version:           1.0.0
 * Requires at least: 6.0
 * Requires PHP:      7.4
 * Author:            clonepool
 * License:           Apache-2.0
 *
 * @package clonepool-migrator
 */

defined('ABSPATH') || exit;

define('CLONEPOOL_MIGRATOR_VERSION', '1.0.0');
define('CLONEPOOL_MIGRATOR_FILE', __FILE__);

require_once __DIR__ . '/includes/class-site.php';
require_once __DIR__ . '/includes/class-tar-writer.php';
require_once __DIR__ . '/includes/class-tar-reader.php';
require_once __DIR__ . '/includes/class-sql-splitter.php';
require_once __DIR__ . '/includes/class-sql-dumper.php';
require_once __DIR__ . '/includes/class-sql-runner.php';
require_once __DIR__ . '/includes/class-files.php';
require_once __DIR__ . '/includes/class-backups.php';
require_once __DIR__ . '/includes/class-exporter.php';
require_once __DIR__ . '/includes/class-importer.php';
require_once __DIR__ . '/includes/class-rest.php';

add_action('rest_api_init', ['Clonepool_Rest', 'keep_import_body_streamable'], 0);
add_action('rest_api_init', ['Clonepool_Rest', 'register']);
