// REST: push devices and the in-app notification list.
import { Body, Controller, Delete, Get, HttpCode, Param, ParseUUIDPipe, Post, Query, UseGuards } from '@nestjs/common';
import { Type } from 'class-transformer';
import { IsIn, IsInt, IsOptional, IsString, IsUUID, Length, Max, Min } from 'class-validator';
import { AuthGuard, AuthUser, CurrentUser } from '../auth/auth.guard';
import { deviceView, NotificationsService } from './notifications.service';

export class RegisterDeviceDto {
  @IsString()
  @Length(1, 4096)
  token: string;

  @IsIn(['android', 'ios', 'web'])
  platform: string;
}

export class ListNotificationsQuery {
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(100)
  limit?: number;

  @IsOptional()
  @IsUUID()
  before?: string;
}

@Controller('notifications')
@UseGuards(AuthGuard)
export class NotificationsController {
  constructor(private readonly notifications: NotificationsService) {}

  @Post('devices')
  async register(@CurrentUser() me: AuthUser, @Body() dto: RegisterDeviceDto) {
    return deviceView(await this.notifications.registerDevice(me.id, dto.token, dto.platform));
  }

  @Delete('devices/:token')
  @HttpCode(204)
  async unregister(@CurrentUser() me: AuthUser, @Param('token') token: string) {
    await this.notifications.removeDevice(me.id, token);
  }

  @Get()
  list(@CurrentUser() me: AuthUser, @Query() q: ListNotificationsQuery) {
    return this.notifications.list(me.id, q.limit ?? 20, q.before);
  }

  @Get('unread-count')
  async unreadCount(@CurrentUser() me: AuthUser) {
    return { count: await this.notifications.unreadCount(me.id) };
  }

  @Post('read-all')
  @HttpCode(200)
  async readAll(@CurrentUser() me: AuthUser) {
    return { updated: await this.notifications.markAllRead(me.id) };
  }

  @Post(':id/read')
  @HttpCode(200)
  read(@CurrentUser() me: AuthUser, @Param('id', new ParseUUIDPipe()) id: string) {
    return this.notifications.markRead(me.id, id);
  }
}
